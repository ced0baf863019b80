//! Ownership of executions by controllers, against a real Postgres: claims stamp the owner and
//! bump the epoch, a write with a stale fence changes nothing, a lost controller's live
//! executions are taken over (`controller-lost`, idempotent ones requeued once), a requeue
//! happens only when the terminal write itself did, and cancels are announced on the feed.

use attune_protocol::api::ExecutionStatus;
use attune_protocol::FailureKind;
use attune_store::status_feed::StatusFeed;
use attune_store::testing::{store_with_pack, TestDatabase};
use attune_store::{
    ActionRow, ControllerRegistration, ExecutionRow, Fence, Store, TransitionFields,
};
use serde_json::json;
use std::time::Duration;

struct Fixture {
    database: TestDatabase,
    store: Store,
}

impl Fixture {
    async fn new() -> Fixture {
        let (database, store) = store_with_pack("examples/packs/hello", 4).await;
        Fixture { database, store }
    }

    async fn finish(self) {
        self.store.pool().close().await;
        self.database
            .drop_database()
            .await
            .expect("drop test database");
    }

    /// `hello.greet`, or `hello.stats` made idempotent.
    async fn action(&self, idempotent: bool) -> ActionRow {
        if !idempotent {
            return self.store.get_action("hello.greet").await.unwrap();
        }
        sqlx_update(
            &self.store,
            "UPDATE actions SET idempotent = $1 WHERE ref = 'hello.stats'",
            true,
        )
        .await;
        self.store.get_action("hello.stats").await.unwrap()
    }

    async fn request(&self, action: &ActionRow) -> ExecutionRow {
        let parameters = json!({"name": "Ada"});
        self.store
            .create_execution(action, parameters.as_object().unwrap())
            .await
            .unwrap()
    }

    async fn register(&self, controller_id: &str) {
        self.store
            .register_controller(&ControllerRegistration {
                id: controller_id.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Ages a controller's last heartbeat, as if it went silent an hour ago.
    async fn silence(&self, controller_id: &str) {
        sqlx_update(
            &self.store,
            "UPDATE controllers SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1",
            controller_id,
        )
        .await;
    }
}

async fn sqlx_update<T>(store: &Store, statement: &str, value: T)
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    sqlx::query(statement)
        .bind(value)
        .execute(store.pool())
        .await
        .unwrap();
}

fn failed(kind: FailureKind, fence: Option<Fence>) -> TransitionFields {
    let mut fields = TransitionFields::error(kind, format!("{kind} in a test"));
    fields.fence = fence;
    fields
}

#[tokio::test]
async fn a_claim_stamps_the_owner_and_no_row_is_claimed_twice() {
    let fixture = Fixture::new().await;
    let action = fixture.action(false).await;
    for _ in 0..6 {
        fixture.request(&action).await;
    }
    let (a, b) = tokio::join!(
        fixture.store.claim_requested("controller-a", 4, false),
        fixture.store.claim_requested("controller-b", 4, false)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 6);
    for row in &a {
        assert_eq!(row.controller_id.as_deref(), Some("controller-a"));
        assert_eq!(row.lease_epoch, 1);
        assert_eq!(row.status(), ExecutionStatus::Scheduled);
    }
    for row in &b {
        assert_eq!(row.controller_id.as_deref(), Some("controller-b"));
        assert!(!a.iter().any(|other| other.id == row.id), "claimed twice");
    }
    let view = fixture
        .store
        .get_execution(a[0].id)
        .await
        .unwrap()
        .to_view();
    assert_eq!(view.controller_id.as_deref(), Some("controller-a"));
    fixture.finish().await;
}

#[tokio::test]
async fn a_write_with_a_stale_fence_changes_nothing() {
    let fixture = Fixture::new().await;
    let action = fixture.action(false).await;
    let requested = fixture.request(&action).await;
    let claimed = fixture
        .store
        .claim_requested("controller-a", 1, false)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claimed.id, requested.id);
    let stale = Fence {
        controller_id: "controller-a".into(),
        epoch: claimed.lease_epoch - 1,
    };
    let foreign = Fence {
        controller_id: "controller-b".into(),
        epoch: claimed.lease_epoch,
    };
    for fence in [stale.clone(), foreign.clone()] {
        let written = fixture
            .store
            .transition(
                claimed.id,
                ExecutionStatus::Failed,
                failed(FailureKind::Killed, Some(fence.clone())),
            )
            .await
            .unwrap();
        assert!(
            written.is_none(),
            "a write fenced by {fence:?} must change nothing"
        );
        assert!(!fixture
            .store
            .set_placement(claimed.id, &fence, "busybox:1.36", "c1", "a1")
            .await
            .unwrap());
    }
    let row = fixture.store.get_execution(claimed.id).await.unwrap();
    assert_eq!(row.status(), ExecutionStatus::Scheduled);
    assert_eq!(row.container_id, None);
    let current = Fence::of(&claimed).unwrap();
    assert!(fixture
        .store
        .set_placement(claimed.id, &current, "busybox:1.36", "c1", "a1")
        .await
        .unwrap());
    let ended = fixture
        .store
        .transition(
            claimed.id,
            ExecutionStatus::Failed,
            failed(FailureKind::Killed, Some(current)),
        )
        .await
        .unwrap()
        .expect("the owner's write applies");
    assert_eq!(ended.status(), ExecutionStatus::Failed);
    assert!(ended.placed_at.is_some());
    fixture.finish().await;
}

#[tokio::test]
async fn a_lost_controllers_executions_are_taken_over_and_idempotent_ones_requeued_once() {
    let fixture = Fixture::new().await;
    fixture.register("controller-a").await;
    fixture.register("controller-b").await;
    let plain = fixture.action(false).await;
    let plain_execution = fixture.request(&plain).await;
    let plain_claim = fixture
        .store
        .claim_requested("controller-a", 1, false)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(plain_claim.id, plain_execution.id);
    let idempotent = fixture.action(true).await;
    let idempotent_execution = fixture.request(&idempotent).await;
    let idempotent_claim = fixture
        .store
        .claim_requested("controller-a", 1, false)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(idempotent_claim.id, idempotent_execution.id);
    let running = TransitionFields {
        fence: Fence::of(&idempotent_claim),
        ..Default::default()
    };
    fixture
        .store
        .transition(idempotent_claim.id, ExecutionStatus::Running, running)
        .await
        .unwrap()
        .expect("running");

    // A live controller is never taken over.
    let grace = Duration::from_secs(30);
    let none = fixture
        .store
        .take_over_lost_controllers("controller-b", grace)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");

    fixture.silence("controller-a").await;
    let taken = fixture
        .store
        .take_over_lost_controllers("controller-b", grace)
        .await
        .unwrap();
    assert_eq!(taken.len(), 2, "{taken:?}");
    let plain_row = fixture.store.get_execution(plain_claim.id).await.unwrap();
    assert_eq!(plain_row.status(), ExecutionStatus::Failed);
    assert_eq!(plain_row.failure_kind, Some(FailureKind::ControllerLost));
    assert!(plain_row.error.as_deref().unwrap().contains("controller-a"));
    assert!(taken
        .iter()
        .any(|entry| entry.execution_id == plain_claim.id && entry.retry_id.is_none()));
    let idempotent_row = fixture
        .store
        .get_execution(idempotent_claim.id)
        .await
        .unwrap();
    assert_eq!(
        idempotent_row.failure_kind,
        Some(FailureKind::ControllerLost)
    );
    let retry_id = taken
        .iter()
        .find(|entry| entry.execution_id == idempotent_claim.id)
        .and_then(|entry| entry.retry_id)
        .expect("the idempotent execution is requeued");
    let retry = fixture.store.get_execution(retry_id).await.unwrap();
    assert_eq!(retry.status(), ExecutionStatus::Requested);
    assert_eq!(retry.retry_of, Some(idempotent_claim.id));
    assert_eq!(retry.controller_id, None);

    // The lost controller's late write (with the epoch it claimed with) changes nothing.
    let late = fixture
        .store
        .transition(
            plain_claim.id,
            ExecutionStatus::Failed,
            failed(FailureKind::AgentExited, Fence::of(&plain_claim)),
        )
        .await
        .unwrap();
    assert!(late.is_none());
    // Nothing is taken over twice, and the returning controller is no longer lost.
    let again = fixture
        .store
        .take_over_lost_controllers("controller-b", grace)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let controllers = fixture.store.list_controllers().await.unwrap();
    let a = controllers
        .iter()
        .find(|row| row.id == "controller-a")
        .unwrap();
    assert!(a.lost_at.is_some());
    fixture.register("controller-a").await;
    let a = fixture
        .store
        .list_controllers()
        .await
        .unwrap()
        .into_iter()
        .find(|row| row.id == "controller-a")
        .unwrap();
    assert!(a.lost_at.is_none());
    assert_eq!(a.incarnation, 2);
    assert!(fixture
        .store
        .live_executions_of("controller-a")
        .await
        .unwrap()
        .is_empty());
    fixture.finish().await;
}

#[tokio::test]
async fn a_requeue_happens_only_when_the_terminal_write_did() {
    let fixture = Fixture::new().await;
    let action = fixture.action(true).await;
    fixture.request(&action).await;
    let claimed = fixture
        .store
        .claim_requested("controller-a", 1, false)
        .await
        .unwrap()
        .remove(0);
    // The agent's success report lands first...
    let succeeded = TransitionFields {
        exit_code: Some(0),
        ..Default::default()
    };
    fixture
        .store
        .transition(
            claimed.id,
            ExecutionStatus::Running,
            TransitionFields::default(),
        )
        .await
        .unwrap();
    fixture
        .store
        .transition(claimed.id, ExecutionStatus::Succeeded, succeeded)
        .await
        .unwrap()
        .expect("succeeded");
    // ...so the controller's "agent died" decision is neither stored nor requeued.
    let outcome = fixture
        .store
        .finish(
            claimed.id,
            ExecutionStatus::Failed,
            failed(FailureKind::AgentExited, Fence::of(&claimed)),
            true,
        )
        .await
        .unwrap();
    assert!(outcome.is_none());
    let retries: i64 = sqlx::query_scalar("SELECT count(*) FROM executions WHERE retry_of = $1")
        .bind(claimed.id)
        .fetch_one(fixture.store.pool())
        .await
        .unwrap();
    assert_eq!(retries, 0, "a succeeded execution is never requeued");

    // A failure the controller does store is requeued, with the retry named in the reason;
    // a kind that says nothing about the agent dying (a timeout) is not.
    fixture.request(&action).await;
    let second = fixture
        .store
        .claim_requested("controller-a", 1, false)
        .await
        .unwrap()
        .remove(0);
    let (row, retry_id) = fixture
        .store
        .finish(
            second.id,
            ExecutionStatus::Failed,
            failed(FailureKind::Killed, Fence::of(&second)),
            true,
        )
        .await
        .unwrap()
        .expect("stored");
    let retry_id = retry_id.expect("requeued");
    assert!(row
        .error
        .unwrap()
        .contains(&format!("requeued once as execution {retry_id}")));
    fixture.request(&action).await;
    let third = fixture
        .store
        .claim_requested("controller-a", 2, false)
        .await
        .unwrap()
        .into_iter()
        .find(|row| row.retry_of.is_none())
        .expect("the third execution");
    let (_, none) = fixture
        .store
        .finish(
            third.id,
            ExecutionStatus::Timeout,
            failed(FailureKind::Timeout, Fence::of(&third)),
            true,
        )
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(none, None);
    fixture.finish().await;
}

#[tokio::test]
async fn a_cancel_is_announced_to_every_listener() {
    let fixture = Fixture::new().await;
    let action = fixture.action(false).await;
    let execution = fixture.request(&action).await;
    let feed = StatusFeed::default();
    let mut cancels = feed.subscribe_cancels();
    let mut connections = feed.connections();
    let listener = tokio::spawn(feed.clone().run(fixture.store.clone()));
    tokio::time::timeout(Duration::from_secs(10), connections.changed())
        .await
        .expect("the feed connects")
        .unwrap();
    fixture.store.request_cancel(execution.id).await.unwrap();
    // Asking twice announces once (the flag was already set).
    fixture.store.request_cancel(execution.id).await.unwrap();
    let announced = tokio::time::timeout(Duration::from_secs(10), cancels.recv())
        .await
        .expect("the cancel is announced")
        .unwrap();
    assert_eq!(announced, execution.id);
    assert!(
        cancels.try_recv().is_err(),
        "a repeated cancel is not announced again"
    );
    listener.abort();
    fixture.finish().await;
}
