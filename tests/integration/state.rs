//! The state backends' contract, run against the memory backend and a real
//! Redis server: insert-if-absent, compare-and-set, indexes, leases.

use std::sync::Arc;
use std::time::Duration;

use crate::support::redis::RedisServer;
use portcullis::domain::*;
use portcullis::state::{Cas, MemoryStore, Store, redis::RedisStore};
use time::OffsetDateTime;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

pub(crate) fn request(id: &str, run: &str, deadline: OffsetDateTime) -> DeploymentRequest {
    DeploymentRequest {
        id: id.into(),
        issuer: String::new(),
        platform: Platform::Github,
        repository: "octo-org/payments".into(),
        run: run.into(),
        environment: "production".into(),
        sha: SHA.into(),
        target: Target::Github {
            owner: "octo-org".into(),
            repo: "payments".into(),
            run_id: run.parse().unwrap(),
            installation_id: None,
            callback_url: "https://api.github.com/x".into(),
        },
        delivery: "d".into(),
        received_at: deadline - time::Duration::minutes(30),
        deadline,
        intake_problems: vec![],
        reviews: vec![],
        status: RequestStatus::Pending,
        decision: None,
        run_attempt: None,
        decided_on: None,
        decision_record: None,
        platform_attempts: 0,
        platform_result: None,
        slack: None,
        version: 0,
    }
}

async fn contract(store: Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    // Delivery dedup: insert-if-absent.
    assert!(store.mark_delivery("g:1", Duration::from_secs(60)).await.unwrap());
    assert!(!store.mark_delivery("g:1", Duration::from_secs(60)).await.unwrap());
    store.forget_delivery("g:1").await.unwrap();
    assert!(store.mark_delivery("g:1", Duration::from_secs(60)).await.unwrap());

    // Requests: create once, indexed by run and verdict key and deadline.
    let r1 = request("req_a", "11", now + time::Duration::minutes(5));
    let r2 = request("req_b", "12", now - time::Duration::seconds(1));
    assert!(store.insert_request(&r1).await.unwrap());
    assert!(!store.insert_request(&r1).await.unwrap());
    assert!(store.insert_request(&r2).await.unwrap());
    assert_eq!(store.get_request("req_a").await.unwrap(), Some(r1.clone()));
    assert_eq!(
        store.requests_for_run(&r1.run_ref().key()).await.unwrap(),
        vec!["req_a".to_string()]
    );
    let mut by_verdict = store.requests_for_verdict(&r1.verdict_key()).await.unwrap();
    by_verdict.sort();
    assert_eq!(by_verdict, vec!["req_a".to_string(), "req_b".to_string()]);
    assert_eq!(store.due_requests(now, 10).await.unwrap(), vec!["req_b".to_string()]);
    assert_eq!(store.open_requests().await.unwrap(), 2);
    assert_eq!(
        store.pending_by_environment().await.unwrap(),
        [("production".to_string(), 2)].into()
    );

    // Compare-and-set on the version.
    let mut next = r1.clone();
    next.reviews.push(Review {
        reviewer: "a@example.com".into(),
        aliases: vec![],
        approve: true,
        via: "slack".into(),
        at: now,
    });
    assert_eq!(store.update_request(&next).await.unwrap(), Cas::Written(1));
    // The same write sent again (its answer lost) is found stored.
    assert_eq!(store.update_request(&next).await.unwrap(), Cas::Written(1));
    assert_eq!(store.update_request_replicated(&next).await.unwrap(), Cas::Written(1));
    let stale = r1.clone();
    match store.update_request(&stale).await.unwrap() {
        Cas::Conflict(Some(current)) => assert_eq!(current.version, 1),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store.update_request(&request("req_none", "13", now)).await.unwrap(),
        Cas::Conflict(None)
    );

    // Leaving pending leaves the indexes; deciding without a lease is due.
    let mut deciding = store.get_request("req_a").await.unwrap().unwrap();
    deciding.status = RequestStatus::Deciding;
    assert_eq!(store.update_request(&deciding).await.unwrap(), Cas::Written(2));
    assert!(store.requests_for_run(&r1.run_ref().key()).await.unwrap().is_empty());
    let mut due = store.due_requests(now, 10).await.unwrap();
    due.sort();
    assert_eq!(due, vec!["req_a".to_string(), "req_b".to_string()]);

    // Leases: one holder at a time, fenced, released only by the holder.
    let l1 = store
        .acquire_lease("req_a", "r1", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("first lease");
    assert!(
        store
            .acquire_lease("req_a", "r2", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.lease_valid(&l1).await.unwrap());
    assert_eq!(
        store.due_requests(now, 10).await.unwrap(),
        vec!["req_b".to_string()],
        "a leased request is not due"
    );
    let forged = portcullis::state::Lease {
        holder: "r2".into(),
        ..l1.clone()
    };
    store.release_lease(&forged).await.unwrap();
    assert!(store.lease_valid(&l1).await.unwrap(), "only the holder releases");
    store.release_lease(&l1).await.unwrap();
    let l2 = store
        .acquire_lease("req_a", "r2", Duration::from_millis(200))
        .await
        .unwrap()
        .expect("second lease");
    assert!(l2.fence > l1.fence, "fences grow");
    assert!(!store.lease_valid(&l1).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!store.lease_valid(&l2).await.unwrap(), "an expired lease is not valid");
    assert!(
        store
            .acquire_lease("req_a", "r3", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );

    // Done requests leave every index.
    let mut done = store.get_request("req_a").await.unwrap().unwrap();
    done.status = RequestStatus::Done;
    assert_eq!(store.update_request(&done).await.unwrap(), Cas::Written(3));
    assert_eq!(store.open_requests().await.unwrap(), 1);
    assert_eq!(
        store.pending_by_environment().await.unwrap(),
        [("production".to_string(), 1)].into()
    );

    // Attestations and verdicts: latest wins.
    assert_eq!(
        store.get_attestation("github:octo-org/payments:11").await.unwrap(),
        None
    );
    assert!(!store.has_attestation("github:octo-org/payments:11").await.unwrap());
    let verdict = portcullis::domain::Verdict {
        platform: portcullis::domain::Platform::Github,
        repository: "octo-org/payments".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        environment: "production".into(),
        allow: true,
        source: portcullis::domain::VerdictSource::Asserted,
        policy: None,
        evidence_digest: None,
        policy_revision: None,
        reasons: vec![],
        producer: portcullis::domain::Producer {
            issuer_name: String::new(),
            issuer: "https://issuer.example".into(),
            subject: "gate".into(),
            actor: "bot".into(),
            claims: Default::default(),
            token_sha256: "00".repeat(32),
        },
        recorded_at: now.replace_nanosecond(0).unwrap(),
    };
    let key = r1.verdict_key();
    store
        .put_verdict(&key, &verdict, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.get_verdict(&key).await.unwrap(), Some(verdict));
    store.delete_verdict(&key).await.unwrap();
    assert_eq!(
        store.get_verdict(&key).await.unwrap(),
        None,
        "a deleted verdict is gone"
    );
    store.delete_verdict(&key).await.unwrap();
    store.ping().await.unwrap();
}

#[tokio::test]
async fn memory_backend_keeps_the_contract() {
    contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_backend_keeps_the_contract() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url(), "t1:").unwrap();
    contract(Arc::new(store)).await;
}

#[tokio::test]
async fn concurrent_lease_grants_give_exactly_one_holder() {
    let redis = RedisServer::start();
    let mut handles = Vec::new();
    for i in 0..16 {
        let url = redis.url();
        handles.push(tokio::spawn(async move {
            let store = RedisStore::connect(&url, "t2:").unwrap();
            store
                .acquire_lease("req_x", &format!("replica-{i}"), Duration::from_secs(30))
                .await
                .unwrap()
        }));
    }
    let mut granted = 0;
    for h in handles {
        if h.await.unwrap().is_some() {
            granted += 1;
        }
    }
    assert_eq!(granted, 1);
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    let mut redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url(), "t3:").unwrap();
    store.ping().await.unwrap();
    redis.kill();
    let started = std::time::Instant::now();
    let err = store.mark_delivery("x", Duration::from_secs(5)).await.unwrap_err();
    assert!(
        err.to_string().starts_with("state backend unavailable: redis:"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    redis.restart();
    // The connection manager reconnects.
    let mut ok = false;
    for _ in 0..50 {
        if store.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "reconnected after the restart");
}

#[tokio::test]
async fn redis_backend_reports_seen_deliveries_without_marking_them() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url(), "t4:").unwrap();
    assert!(!store.delivery_seen("github:g1").await.unwrap());
    assert!(
        !store.delivery_seen("github:g1").await.unwrap(),
        "asking does not record"
    );
    assert!(store.mark_delivery("github:g1", Duration::from_secs(60)).await.unwrap());
    assert!(store.delivery_seen("github:g1").await.unwrap());
    store.forget_delivery("github:g1").await.unwrap();
    assert!(!store.delivery_seen("github:g1").await.unwrap());
}

fn grant(id: &str, sha: &str, now: OffsetDateTime) -> Grant {
    let person = |email: &str| Person {
        email: email.into(),
        aliases: vec![],
        via: "sso".into(),
        verified: "test provider, subject 1".into(),
        at: now,
    };
    Grant {
        id: id.into(),
        repository: "octo-org/payments".into(),
        sha: sha.into(),
        environment: "production".into(),
        justification: "the scanners are down and a fix must ship".into(),
        requester: person("oncall@example.com"),
        confirmations: vec![],
        required: 1,
        state: GrantState::Requested,
        requested_at: now,
        confirmed_at: None,
        expires_at: now + time::Duration::hours(1),
        uses: vec![],
        review_due: None,
        review: None,
        reminded_at: None,
        alert: None,
        version: 0,
    }
}

/// Break-glass grants: insert-if-absent, compare-and-set, by commit, and
/// the open index that drops finished grants.
async fn grant_contract(store: Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    let g = grant("bg_1", &"a".repeat(40), now);
    assert!(store.insert_grant(&g).await.unwrap());
    assert!(!store.insert_grant(&g).await.unwrap(), "a second insert of one id");
    assert!(store.insert_grant(&grant("bg_2", &"b".repeat(40), now)).await.unwrap());
    let mut stored = store.get_grant("bg_1").await.unwrap().expect("stored");
    assert_eq!(stored.justification, g.justification);
    let ids = |gs: Vec<Grant>| {
        let mut ids: Vec<String> = gs.into_iter().map(|g| g.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(store.grants_for(&g.key()).await.unwrap()), ["bg_1"]);
    assert_eq!(ids(store.open_grants().await.unwrap()), ["bg_1", "bg_2"]);

    // Compare-and-set: the version read must be the version stored.
    let stale = stored.clone();
    stored.state = GrantState::Confirmed;
    assert!(store.update_grant(&stored).await.unwrap());
    assert!(!store.update_grant(&stale).await.unwrap(), "a stale write was taken");
    let confirmed = store.get_grant("bg_1").await.unwrap().unwrap();
    assert_eq!(confirmed.state, GrantState::Confirmed);

    // Expired and not used: finished, so it leaves the open index but stays
    // readable by id and by commit.
    let mut expired = confirmed;
    expired.state = GrantState::Expired;
    assert!(store.update_grant(&expired).await.unwrap());
    assert_eq!(ids(store.open_grants().await.unwrap()), ["bg_2"]);
    assert_eq!(ids(store.grants_for(&g.key()).await.unwrap()), ["bg_1"]);
    assert_eq!(
        store.get_grant("bg_1").await.unwrap().unwrap().state,
        GrantState::Expired
    );
    assert_eq!(store.get_grant("bg_none").await.unwrap(), None);
}

#[tokio::test]
async fn memory_grants_keep_the_contract() {
    grant_contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_grants_keep_the_contract_across_connections() {
    let redis = RedisServer::start();
    grant_contract(Arc::new(RedisStore::connect(&redis.url(), "g1:").unwrap())).await;
    // Another replica's connection sees the same grants.
    let other = RedisStore::connect(&redis.url(), "g1:").unwrap();
    assert_eq!(
        other.get_grant("bg_2").await.unwrap().map(|g| g.sha),
        Some("b".repeat(40))
    );
}
