//! Idempotency keys against a real Postgres: the first claim of a key wins (also among
//! concurrent claims), a completed key answers again with its execution, another body is a
//! mismatch, a refused request gives its claim back, expired keys are free again and deleted,
//! and an abandoned claim is taken over without letting its late request complete it.

use attune_store::testing::{store_with_pack, TestDatabase};
use attune_store::{
    ActionRow, IdempotencyClaim, IdempotencyRequest, IdempotencyState, Store, StoreError,
};
use serde_json::{json, Map, Value};
use std::time::Duration;

struct Fixture {
    database: TestDatabase,
    store: Store,
    action: ActionRow,
}

impl Fixture {
    async fn new() -> Fixture {
        let (database, store) = store_with_pack("examples/packs/hello", 24).await;
        let action = store.get_action("hello.greet").await.unwrap();
        Fixture {
            database,
            store,
            action,
        }
    }

    async fn finish(self) {
        self.store.pool().close().await;
        self.database
            .drop_database()
            .await
            .expect("drop test database");
    }

    async fn claim(&self, key: &str, fingerprint: &str) -> IdempotencyState {
        self.store
            .claim_idempotency_key(&request(key, fingerprint))
            .await
            .expect("claim")
    }

    async fn create(&self, claim: &IdempotencyClaim) -> Result<i64, StoreError> {
        let parameters: Map<String, Value> = json!({"name": "Ada"}).as_object().unwrap().clone();
        self.store
            .create_execution_for_key(
                claim,
                &self.action,
                &parameters,
                201,
                |row| json!({"id": row.id, "answer": "first"}),
            )
            .await
            .map(|row| row.id)
    }

    async fn executions(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM executions")
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    async fn keys(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    /// Makes a key look `age` old.
    async fn age(&self, key: &str, age: &str) {
        sqlx::query(&format!(
            "UPDATE idempotency_keys SET created_at = now() - interval '{age}' WHERE key = $1"
        ))
        .bind(key)
        .execute(self.store.pool())
        .await
        .unwrap();
    }
}

fn request<'a>(key: &'a str, fingerprint: &'a str) -> IdempotencyRequest<'a> {
    IdempotencyRequest {
        key,
        fingerprint,
        ttl: Duration::from_secs(24 * 3600),
        abandoned_after: Duration::from_secs(60),
    }
}

fn claimed(state: IdempotencyState) -> IdempotencyClaim {
    match state {
        IdempotencyState::Claimed(claim) => claim,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test]
async fn the_first_request_wins_and_a_retry_gets_its_answer() {
    let fixture = Fixture::new().await;
    let claim = claimed(fixture.claim("key-1", "body-a").await);
    assert_eq!(claim.key, "key-1");
    // While the first request is processed: a retry is in progress, another body a mismatch.
    assert_eq!(
        fixture.claim("key-1", "body-a").await,
        IdempotencyState::InProgress
    );
    assert_eq!(
        fixture.claim("key-1", "body-b").await,
        IdempotencyState::Mismatch
    );

    let execution_id = fixture.create(&claim).await.expect("create");
    let answer = fixture.claim("key-1", "body-a").await;
    assert_eq!(
        answer,
        IdempotencyState::Completed {
            execution_id,
            status: 201,
            body: json!({"id": execution_id, "answer": "first"}),
        }
    );
    assert_eq!(
        fixture.claim("key-1", "body-b").await,
        IdempotencyState::Mismatch
    );
    assert_eq!(fixture.executions().await, 1);
    // A completed claim cannot be completed twice.
    assert!(matches!(
        fixture.create(&claim).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(fixture.executions().await, 1);
    // Another key is another request.
    claimed(fixture.claim("key-2", "body-a").await);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_claims_exactly_one_wins() {
    let fixture = Fixture::new().await;
    let mut claims = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = fixture.store.clone();
        claims.spawn(async move {
            store
                .claim_idempotency_key(&request("race", "body"))
                .await
                .expect("claim")
        });
    }
    let states = claims.join_all().await;
    let winners = states
        .iter()
        .filter(|state| matches!(state, IdempotencyState::Claimed(_)))
        .count();
    assert_eq!(winners, 1, "{states:?}");
    assert!(states.iter().all(|state| matches!(
        state,
        IdempotencyState::Claimed(_) | IdempotencyState::InProgress
    )));
    assert_eq!(fixture.keys().await, 1);
    fixture.finish().await;
}

#[tokio::test]
async fn a_released_claim_is_free_again() {
    let fixture = Fixture::new().await;
    let claim = claimed(fixture.claim("refused", "body-a").await);
    fixture.store.release_idempotency_key(&claim).await.unwrap();
    assert_eq!(fixture.keys().await, 0);
    // Free for any body: nothing was created under it.
    let again = claimed(fixture.claim("refused", "body-b").await);
    fixture.create(&again).await.expect("create");
    // Releasing a completed claim changes nothing.
    fixture.store.release_idempotency_key(&again).await.unwrap();
    assert!(matches!(
        fixture.claim("refused", "body-b").await,
        IdempotencyState::Completed { .. }
    ));
    fixture.finish().await;
}

#[tokio::test]
async fn an_expired_key_is_new_and_expired_keys_are_deleted() {
    let fixture = Fixture::new().await;
    let first = claimed(fixture.claim("old", "body-a").await);
    let first_id = fixture.create(&first).await.unwrap();
    for index in 0..5 {
        let key = format!("stale-{index}");
        let claim = claimed(fixture.claim(&key, "body").await);
        fixture.create(&claim).await.unwrap();
        fixture.age(&key, "25 hours").await;
    }
    fixture.age("old", "25 hours").await;

    // Expired: even another body starts afresh, with a new execution.
    let second = claimed(fixture.claim("old", "body-b").await);
    let second_id = fixture.create(&second).await.unwrap();
    assert_ne!(first_id, second_id);
    match fixture.claim("old", "body-b").await {
        IdempotencyState::Completed { execution_id, .. } => assert_eq!(execution_id, second_id),
        other => panic!("expected the new answer, got {other:?}"),
    }
    // The other expired keys went with that claim.
    assert_eq!(fixture.keys().await, 1);
    // Keys within their time stay.
    let young = claimed(fixture.claim("young", "body").await);
    fixture.create(&young).await.unwrap();
    fixture.age("young", "23 hours").await;
    assert!(matches!(
        fixture.claim("young", "body").await,
        IdempotencyState::Completed { .. }
    ));
    fixture.finish().await;
}

#[tokio::test]
async fn an_abandoned_claim_is_taken_over_and_cannot_complete_late() {
    let fixture = Fixture::new().await;
    let abandoned = claimed(fixture.claim("crashed", "body").await);
    fixture.age("crashed", "2 minutes").await;
    let successor = claimed(fixture.claim("crashed", "body").await);
    assert_ne!(abandoned, successor);
    // The first request's process comes back late: it creates nothing.
    assert!(matches!(
        fixture.create(&abandoned).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(fixture.executions().await, 0);
    let execution_id = fixture.create(&successor).await.unwrap();
    assert!(matches!(
        fixture.claim("crashed", "body").await,
        IdempotencyState::Completed { execution_id: found, .. } if found == execution_id
    ));
    // A completed key is never taken over as abandoned, however old (within its ttl).
    fixture.age("crashed", "2 hours").await;
    assert!(matches!(
        fixture.claim("crashed", "body").await,
        IdempotencyState::Completed { .. }
    ));
    assert_eq!(fixture.executions().await, 1);
    fixture.finish().await;
}
