//! The Redis state backend, for several replicas sharing one Redis.
//!
//! Every multi-key change is one Lua script, so it is atomic on the server:
//! request creation with its indexes, compare-and-set on a request's version,
//! and lease grant/release with a fencing counter. Connections go through a
//! [`RedisConn`] (opened by `crate::redis_conn`: direct, or to the master
//! Redis Sentinel names), which reconnects; each command has a response
//! timeout, so an unreachable Redis turns into a [`StateError`] quickly
//! (webhooks then answer 503) instead of a hung request.
//!
//! With `min_replicas` ([`RedisStore::with_min_replicas`]),
//! [`Store::update_request_replicated`] sends `WAIT min_replicas` with the
//! write and fails unless that many replicas acknowledged it: the gate's
//! last write before a platform call, and the one that closes the request,
//! then survive a failover.
//!
//! Keys, under the configured prefix `P`:
//! - `P d:{delivery}`: delivery dedup, `SET NX EX`.
//! - `P a:{run}` / `P v:{verdict key}`: latest attestation / verdict (JSON, TTL).
//! - `P r:{id}`: a request, a hash of `v` (version) and `j` (JSON).
//! - `P ir:{run}`, `P iv:{verdict key}`: sets of pending request ids.
//! - `P deadlines`: sorted set of pending request ids by deadline.
//! - `P deciding`: set of request ids being acted on.
//! - `P l:{id}`: a lease, `holder|fence`, with a TTL; `P fence`: the counter.
//! - break-glass grants: see `super::grants_redis`.

use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};
use time::OffsetDateTime;

use super::{Cas, Lease, StateError, StateResult, Store};
use crate::domain::{Attestation, DeploymentRequest, Grant, RequestStatus, Verdict};
pub use crate::redis_conn::RedisConn;

/// Requests that are done are kept this long for `GET /v1/requests/{id}`.
const DONE_TTL_SECS: i64 = 30 * 24 * 3600;

const INSERT_REQUEST: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'j', ARGV[2])
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
  redis.call('SADD', KEYS[3], ARGV[5])
  redis.call('SADD', KEYS[4], ARGV[5])
end
return 1
"#;

/// KEYS: request, deadlines, run index, verdict index, deciding set.
/// ARGV: expected version, new version, new JSON, new status, id, done TTL.
/// Returns {1} when written, {0, json} on conflict, {0} when absent. The
/// same write sent again (its answer lost) is stored already: it is written
/// over itself, so that a `WAIT` after it counts it, and answers {1}.
const UPDATE_REQUEST: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then return {0} end
if cur == ARGV[2] and redis.call('HGET', KEYS[1], 'j') == ARGV[3] then
  redis.call('HSET', KEYS[1], 'v', ARGV[2])
  return {1}
end
if cur ~= ARGV[1] then return {0, redis.call('HGET', KEYS[1], 'j')} end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'j', ARGV[3])
if ARGV[4] ~= 'pending' then
  redis.call('ZREM', KEYS[2], ARGV[5])
  redis.call('SREM', KEYS[3], ARGV[5])
  redis.call('SREM', KEYS[4], ARGV[5])
end
if ARGV[4] == 'deciding' then
  redis.call('SADD', KEYS[5], ARGV[5])
else
  redis.call('SREM', KEYS[5], ARGV[5])
end
if ARGV[4] == 'done' or ARGV[4] == 'superseded' then
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
return {1}
"#;

/// KEYS: lease, fence counter. ARGV: holder, ttl ms.
const ACQUIRE_LEASE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. fence, 'PX', ARGV[2])
return fence
"#;

/// KEYS: lease. ARGV: holder|fence.
const RELEASE_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
    /// Replicas that must acknowledge a replicated write (0: none asked).
    min_replicas: u32,
    insert_request: Script,
    acquire_lease: Script,
    release_lease: Script,
    grants: super::grants_redis::RedisGrants,
}

fn err(e: redis::RedisError) -> StateError {
    // The error's text names the failure (connection refused, timeout), never
    // the URL's password, which the client does not echo.
    StateError(format!("redis: {e}"))
}

fn encode<T: serde::Serialize>(v: &T) -> StateResult<String> {
    serde_json::to_string(v).map_err(|e| StateError(format!("cannot encode state: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(s: &str) -> StateResult<T> {
    serde_json::from_str(s).map_err(|e| StateError(format!("cannot decode state: {e}")))
}

fn status_word(s: RequestStatus) -> &'static str {
    match s {
        RequestStatus::Pending => "pending",
        RequestStatus::Deciding => "deciding",
        RequestStatus::Done => "done",
        RequestStatus::Superseded => "superseded",
    }
}

/// The answer of `UPDATE_REQUEST` for a write of `version`.
fn cas_reply(reply: redis::Value, version: u64) -> StateResult<Cas> {
    let redis::Value::Array(reply) = reply else {
        return Err(StateError("redis: unexpected answer to a request update".into()));
    };
    if matches!(reply.first(), Some(redis::Value::Int(1))) {
        return Ok(Cas::Written(version));
    }
    let current = match reply.get(1) {
        Some(v) => {
            let s: String =
                redis::FromRedisValue::from_redis_value(v.clone()).map_err(|e| StateError(format!("redis: {e}")))?;
            Some(Box::new(decode(&s)?))
        }
        None => None,
    };
    Ok(Cas::Conflict(current))
}

fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs().max(1)
}

impl RedisStore {
    /// Connects lazily: the service starts even while Redis is down, and
    /// `/readyz` says so until it is back.
    pub fn connect(url: &str, prefix: &str) -> StateResult<RedisStore> {
        let conn = crate::redis_conn::connect(url).map_err(|e| StateError(e.to_string()))?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_string(),
            min_replicas: 0,
            insert_request: Script::new(INSERT_REQUEST),
            acquire_lease: Script::new(ACQUIRE_LEASE),
            release_lease: Script::new(RELEASE_LEASE),
            grants: super::grants_redis::RedisGrants::new(),
        })
    }

    /// Has [`Store::update_request_replicated`] wait for `n` replicas
    /// (`state.min_replicas`).
    pub fn with_min_replicas(mut self, n: u32) -> RedisStore {
        self.min_replicas = n;
        self
    }

    /// A connection for other Redis-backed parts (the audit chain).
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{}:{}", self.prefix, kind, rest)
    }

    fn request_keys(&self, req: &DeploymentRequest) -> [String; 5] {
        [
            self.key("r", &req.id),
            format!("{}deadlines", self.prefix),
            self.key("ir", &req.run_ref().key()),
            self.key("iv", &req.verdict_key()),
            format!("{}deciding", self.prefix),
        ]
    }

    /// The compare-and-set of `req` as an `EVAL` (sent alone, or with a
    /// `WAIT` after it), and the version it writes.
    fn update_eval(&self, req: &DeploymentRequest) -> StateResult<(redis::Cmd, u64)> {
        let mut next = req.clone();
        next.version = req.version + 1;
        let mut eval = redis::cmd("EVAL");
        eval.arg(UPDATE_REQUEST)
            .arg(5)
            .arg(&self.request_keys(req)[..])
            .arg(req.version)
            .arg(next.version)
            .arg(encode(&next)?)
            .arg(status_word(next.status))
            .arg(&req.id)
            .arg(DONE_TTL_SECS);
        Ok((eval, next.version))
    }

    /// The `appendonly` and `appendfsync` settings, for the audit backend's
    /// persistence check at start.
    pub async fn persistence(&self) -> StateResult<(String, String)> {
        let mut c = self.conn.clone();
        let aof: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        let fsync: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok((
            aof.get(1).cloned().unwrap_or_default(),
            fsync.get(1).cloned().unwrap_or_default(),
        ))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn mark_delivery(&self, id: &str, ttl: Duration) -> StateResult<bool> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key("d", id))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs(ttl))
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(set.is_some())
    }

    async fn forget_delivery(&self, id: &str) -> StateResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = c.del(self.key("d", id)).await.map_err(err)?;
        Ok(())
    }

    async fn delivery_seen(&self, id: &str) -> StateResult<bool> {
        let mut c = self.conn.clone();
        c.exists(self.key("d", id)).await.map_err(err)
    }

    async fn put_attestation(&self, run_key: &str, att: &Attestation, ttl: Duration) -> StateResult<()> {
        let mut c = self.conn.clone();
        let _: () = c
            .set_ex(self.key("a", run_key), encode(att)?, ttl_secs(ttl))
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn get_attestation(&self, run_key: &str) -> StateResult<Option<Attestation>> {
        let mut c = self.conn.clone();
        let s: Option<String> = c.get(self.key("a", run_key)).await.map_err(err)?;
        s.as_deref().map(decode).transpose()
    }

    async fn has_attestation(&self, run_key: &str) -> StateResult<bool> {
        let mut c = self.conn.clone();
        c.exists(self.key("a", run_key)).await.map_err(err)
    }

    async fn put_verdict(&self, key: &str, verdict: &Verdict, ttl: Duration) -> StateResult<()> {
        let mut c = self.conn.clone();
        let _: () = c
            .set_ex(self.key("v", key), encode(verdict)?, ttl_secs(ttl))
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn get_verdict(&self, key: &str) -> StateResult<Option<Verdict>> {
        let mut c = self.conn.clone();
        let s: Option<String> = c.get(self.key("v", key)).await.map_err(err)?;
        s.as_deref().map(decode).transpose()
    }

    async fn delete_verdict(&self, key: &str) -> StateResult<()> {
        let mut c = self.conn.clone();
        let _: () = c.del(self.key("v", key)).await.map_err(err)?;
        Ok(())
    }

    async fn insert_request(&self, req: &DeploymentRequest) -> StateResult<bool> {
        let mut c = self.conn.clone();
        let [r, deadlines, ir, iv, _] = self.request_keys(req);
        let created: i64 = self
            .insert_request
            .key(r)
            .key(deadlines)
            .key(ir)
            .key(iv)
            .arg(req.version)
            .arg(encode(req)?)
            .arg(status_word(req.status))
            .arg(req.deadline.unix_timestamp())
            .arg(&req.id)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(created == 1)
    }

    async fn get_request(&self, id: &str) -> StateResult<Option<DeploymentRequest>> {
        let mut c = self.conn.clone();
        let s: Option<String> = c.hget(self.key("r", id), "j").await.map_err(err)?;
        s.as_deref().map(decode).transpose()
    }

    async fn update_request(&self, req: &DeploymentRequest) -> StateResult<Cas> {
        let mut c = self.conn.clone();
        let (eval, version) = self.update_eval(req)?;
        let reply: redis::Value = eval.query_async(&mut c).await.map_err(err)?;
        cas_reply(reply, version)
    }

    async fn update_request_replicated(&self, req: &DeploymentRequest) -> StateResult<Cas> {
        if self.min_replicas == 0 {
            return self.update_request(req).await;
        }
        let mut c = self.conn.clone();
        let (eval, version) = self.update_eval(req)?;
        let (reply, acks) = crate::redis_conn::eval_and_wait(&mut c, eval, self.min_replicas)
            .await
            .map_err(err)?;
        let cas = cas_reply(reply, version)?;
        if matches!(cas, Cas::Written(_)) && acks < self.min_replicas {
            return Err(StateError(format!(
                "redis: request {} written, but acknowledged by {acks} of the {} replica(s) state.min_replicas asks for",
                req.id, self.min_replicas
            )));
        }
        Ok(cas)
    }

    async fn requests_for_run(&self, run_key: &str) -> StateResult<Vec<String>> {
        let mut c = self.conn.clone();
        c.smembers(self.key("ir", run_key)).await.map_err(err)
    }

    async fn requests_for_verdict(&self, verdict_key: &str) -> StateResult<Vec<String>> {
        let mut c = self.conn.clone();
        c.smembers(self.key("iv", verdict_key)).await.map_err(err)
    }

    async fn due_requests(&self, now: OffsetDateTime, limit: usize) -> StateResult<Vec<String>> {
        let mut c = self.conn.clone();
        let mut out: Vec<String> = c
            .zrangebyscore_limit(
                format!("{}deadlines", self.prefix),
                "-inf",
                now.unix_timestamp(),
                0,
                limit as isize,
            )
            .await
            .map_err(err)?;
        let deciding: Vec<String> = c.smembers(format!("{}deciding", self.prefix)).await.map_err(err)?;
        if !deciding.is_empty() && out.len() < limit {
            let mut pipe = redis::pipe();
            for id in &deciding {
                pipe.exists(self.key("l", id));
            }
            let held: Vec<bool> = pipe.query_async(&mut c).await.map_err(err)?;
            out.extend(
                deciding
                    .into_iter()
                    .zip(held)
                    .filter(|(_, h)| !h)
                    .map(|(id, _)| id)
                    .take(limit - out.len()),
            );
        }
        Ok(out)
    }

    async fn open_requests(&self) -> StateResult<u64> {
        let mut c = self.conn.clone();
        let (pending, deciding): (u64, u64) = redis::pipe()
            .zcard(format!("{}deadlines", self.prefix))
            .scard(format!("{}deciding", self.prefix))
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(pending + deciding)
    }

    async fn pending_by_environment(&self) -> StateResult<std::collections::BTreeMap<String, u64>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = c
            .zrange(format!("{}deadlines", self.prefix), 0, 9999)
            .await
            .map_err(err)?;
        let mut out = std::collections::BTreeMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(self.key("r", id), "j");
        }
        let bodies: Vec<Option<String>> = pipe.query_async(&mut c).await.map_err(err)?;
        for body in bodies.into_iter().flatten() {
            let req: DeploymentRequest = decode(&body)?;
            if req.status == RequestStatus::Pending {
                *out.entry(req.environment).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    async fn acquire_lease(&self, request: &str, holder: &str, ttl: Duration) -> StateResult<Option<Lease>> {
        let mut c = self.conn.clone();
        let fence: i64 = self
            .acquire_lease
            .key(self.key("l", request))
            .key(format!("{}fence", self.prefix))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok((fence > 0).then(|| Lease {
            request: request.to_string(),
            holder: holder.to_string(),
            fence: fence as u64,
        }))
    }

    async fn lease_valid(&self, lease: &Lease) -> StateResult<bool> {
        let mut c = self.conn.clone();
        let v: Option<String> = c.get(self.key("l", &lease.request)).await.map_err(err)?;
        Ok(v.as_deref() == Some(format!("{}|{}", lease.holder, lease.fence).as_str()))
    }

    async fn release_lease(&self, lease: &Lease) -> StateResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .release_lease
            .key(self.key("l", &lease.request))
            .arg(format!("{}|{}", lease.holder, lease.fence))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn insert_grant(&self, grant: &Grant) -> StateResult<bool> {
        self.grants.insert(self.conn.clone(), &self.prefix, grant).await
    }

    async fn get_grant(&self, id: &str) -> StateResult<Option<Grant>> {
        self.grants.get(self.conn.clone(), &self.prefix, id).await
    }

    async fn update_grant(&self, grant: &Grant) -> StateResult<bool> {
        self.grants.update(self.conn.clone(), &self.prefix, grant).await
    }

    async fn grants_for(&self, key: &str) -> StateResult<Vec<Grant>> {
        self.grants.for_key(self.conn.clone(), &self.prefix, key).await
    }

    async fn open_grants(&self) -> StateResult<Vec<Grant>> {
        self.grants.open(self.conn.clone(), &self.prefix).await
    }

    async fn ping(&self) -> StateResult<()> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await.map_err(err)?;
        Ok(())
    }
}
