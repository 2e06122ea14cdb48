//! Break-glass grants in the Redis state backend, shared by every replica.
//!
//! Keys, under the configured prefix `P`:
//! - `P g:{id}`: a grant, a hash of `v` (version) and `j` (JSON);
//! - `P gk:{key}`: the ids of the grants for (repository, sha, environment);
//! - `P gopen`: the ids of grants not finished.
//!
//! Creation and compare-and-set are Lua scripts, atomic on the server, as
//! for requests. A finished grant leaves `gopen` and expires after
//! [`FINISHED_TTL_SECS`] (its records stay in the audit trail).

use crate::redis_conn::RedisConn;
use redis::{AsyncCommands, Script};

use super::{StateError, StateResult};
use crate::domain::Grant;

/// Finished grants are kept this long for the read API.
const FINISHED_TTL_SECS: i64 = 90 * 24 * 3600;

/// KEYS: grant, key index, open set. ARGV: version, JSON, id, open (1/0).
const INSERT_GRANT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'j', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if ARGV[4] == '1' then redis.call('SADD', KEYS[3], ARGV[3]) end
return 1
"#;

/// KEYS: grant, open set. ARGV: expected version, new version, JSON, id,
/// finished (1/0), finished TTL.
const UPDATE_GRANT: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'j', ARGV[3])
if ARGV[5] == '1' then
  redis.call('SREM', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
else
  redis.call('SADD', KEYS[2], ARGV[4])
end
return 1
"#;

fn err(e: redis::RedisError) -> StateError {
    StateError(format!("redis: {e}"))
}

fn encode(g: &Grant) -> StateResult<String> {
    serde_json::to_string(g).map_err(|e| StateError(format!("cannot encode state: {e}")))
}

fn decode(s: &str) -> StateResult<Grant> {
    serde_json::from_str(s).map_err(|e| StateError(format!("cannot decode state: {e}")))
}

/// The grant half of [`super::redis::RedisStore`].
pub(super) struct RedisGrants {
    insert: Script,
    update: Script,
}

impl RedisGrants {
    pub(super) fn new() -> RedisGrants {
        RedisGrants {
            insert: Script::new(INSERT_GRANT),
            update: Script::new(UPDATE_GRANT),
        }
    }

    pub(super) async fn insert(&self, mut c: RedisConn, prefix: &str, g: &Grant) -> StateResult<bool> {
        let created: i64 = self
            .insert
            .key(format!("{prefix}g:{}", g.id))
            .key(format!("{prefix}gk:{}", g.key()))
            .key(format!("{prefix}gopen"))
            .arg(g.version)
            .arg(encode(g)?)
            .arg(&g.id)
            .arg(if g.finished() { "0" } else { "1" })
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(created == 1)
    }

    pub(super) async fn update(&self, mut c: RedisConn, prefix: &str, g: &Grant) -> StateResult<bool> {
        let mut next = g.clone();
        next.version = g.version + 1;
        let written: i64 = self
            .update
            .key(format!("{prefix}g:{}", g.id))
            .key(format!("{prefix}gopen"))
            .arg(g.version)
            .arg(next.version)
            .arg(encode(&next)?)
            .arg(&g.id)
            .arg(if next.finished() { "1" } else { "0" })
            .arg(FINISHED_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(written == 1)
    }

    pub(super) async fn get(&self, mut c: RedisConn, prefix: &str, id: &str) -> StateResult<Option<Grant>> {
        let s: Option<String> = c.hget(format!("{prefix}g:{id}"), "j").await.map_err(err)?;
        s.as_deref().map(decode).transpose()
    }

    async fn many(&self, mut c: RedisConn, prefix: &str, ids: Vec<String>) -> StateResult<Vec<Grant>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(format!("{prefix}g:{id}"), "j");
        }
        let found: Vec<Option<String>> = pipe.query_async(&mut c).await.map_err(err)?;
        found.into_iter().flatten().map(|s| decode(&s)).collect()
    }

    pub(super) async fn for_key(&self, mut c: RedisConn, prefix: &str, key: &str) -> StateResult<Vec<Grant>> {
        let ids: Vec<String> = c.smembers(format!("{prefix}gk:{key}")).await.map_err(err)?;
        self.many(c, prefix, ids).await
    }

    pub(super) async fn open(&self, mut c: RedisConn, prefix: &str) -> StateResult<Vec<Grant>> {
        let ids: Vec<String> = c.smembers(format!("{prefix}gopen")).await.map_err(err)?;
        self.many(c, prefix, ids).await
    }
}
