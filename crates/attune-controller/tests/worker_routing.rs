//! Routing to long-lived workers against a real Postgres: the policy of
//! `attune_controller::workers::choose_worker` applied through
//! `Store::route_to_workers` — concurrency bounds and least-loaded choice under 200 executions
//! over 3 workers (also with two routers at once), waiting reasons and the queue timeout,
//! silent workers going offline and what they ran ending `worker-lost` (idempotent ones
//! requeued once).

use attune_controller::workers::choose_worker;
use attune_protocol::api::ExecutionStatus;
use attune_protocol::worker::{WorkerEnrollment, WorkerStatus};
use attune_protocol::{DetectedRuntime, FailureKind};
use attune_store::testing::store_with_pack;
use attune_store::{Store, TransitionFields};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PACK: &str = "crates/attune-server/tests/packs/workers";
const TIMEOUT: Duration = Duration::from_secs(300);

fn enrollment(
    name: &str,
    runtimes: &[&str],
    labels: &[(&str, &str)],
    concurrency: u32,
) -> WorkerEnrollment {
    WorkerEnrollment {
        name: name.into(),
        protocol_version: attune_protocol::PROTOCOL_VERSION,
        agent_version: "0.1.0".into(),
        agent_sha256: String::new(),
        runtimes: runtimes
            .iter()
            .map(|runtime| DetectedRuntime {
                name: runtime.to_string(),
                version: None,
                path: format!("/usr/bin/{runtime}"),
            })
            .collect(),
        labels: labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        concurrency,
        image: None,
    }
}

async fn submit(store: &Store, action_ref: &str, count: usize) -> Vec<i64> {
    let action = store.get_action(action_ref).await.unwrap();
    let mut ids = Vec::new();
    for item in 0..count {
        let parameters: Map<String, Value> = json!({"item": item}).as_object().unwrap().clone();
        ids.push(
            store
                .create_execution(&action, &parameters)
                .await
                .unwrap()
                .id,
        );
    }
    ids
}

async fn route(store: &Store) -> attune_store::workers::RoutingPass {
    let now = store.now().await.unwrap();
    store
        .route_to_workers(500, |workers, queued| {
            choose_worker(workers, queued, now, TIMEOUT)
        })
        .await
        .unwrap()
}

/// Executions scheduled or running per worker name.
async fn load(store: &Store) -> HashMap<String, u32> {
    store
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .map(|worker| (worker.name, worker.running))
        .collect()
}

async fn finish(store: &Store, execution_id: i64, agent_id: &str) {
    let running = TransitionFields {
        from_agent: Some(agent_id.to_string()),
        ..Default::default()
    };
    store
        .transition(execution_id, ExecutionStatus::Running, running)
        .await
        .unwrap()
        .expect("its worker's agent may report it running");
    let done = TransitionFields {
        from_agent: Some(agent_id.to_string()),
        exit_code: Some(0),
        ..Default::default()
    };
    store
        .transition(execution_id, ExecutionStatus::Succeeded, done)
        .await
        .unwrap()
        .expect("its worker's agent may report it finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_executions_over_three_workers_never_exceed_a_workers_concurrency() {
    let (database, store) = store_with_pack(PACK, 8).await;
    let concurrency: BTreeMap<&str, u32> = [("w-a", 2), ("w-b", 3), ("w-c", 5)].into();
    let mut agents = HashMap::new();
    for (name, slots) in &concurrency {
        let agent_id = format!("worker-{name}-1");
        store
            .enroll_worker(&enrollment(name, &["bash"], &[], *slots), &agent_id, None)
            .await
            .unwrap();
        agents.insert(name.to_string(), agent_id);
    }
    let ids = submit(&store, "workers.hello_sh", 200).await;

    // Two routers at once (two servers): the second starts while the first is inside its
    // transaction, and together they fill every slot and no more.
    let other = Store::connect(&database.url, 4).await.unwrap();
    let second_done = Arc::new(AtomicBool::new(false));
    let (inside_first, first_is_inside) = tokio::sync::oneshot::channel::<()>();
    let second = {
        let second_done = second_done.clone();
        tokio::spawn(async move {
            // Starts once the first router holds its transaction open.
            first_is_inside.await.expect("the first router signals");
            let pass = route(&other).await;
            second_done.store(true, Ordering::SeqCst);
            pass
        })
    };
    let now = store.now().await.unwrap();
    let mut inside_first = Some(inside_first);
    // The first takes a small batch, so the second finds executions the first did not lock.
    let first = store
        .route_to_workers(5, |workers, queued| {
            if let Some(signal) = inside_first.take() {
                signal.send(()).expect("the second router listens");
                // Hold this transaction until the second router either waits for it (on the
                // workers' row locks) or — were there no lock — has routed on its own.
                while !second_done.load(Ordering::SeqCst) && !waits_on_a_lock(&database.name) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            choose_worker(workers, queued, now, TIMEOUT)
        })
        .await
        .unwrap();
    let second = second.await.unwrap();
    assert_eq!(first.routed.len() + second.routed.len(), 10);
    let loads = load(&store).await;
    for (name, slots) in &concurrency {
        assert_eq!(
            loads[*name], *slots,
            "worker {name} runs exactly its concurrency"
        );
    }
    // Every routed execution has its worker's agent and no controller.
    for routed in first.routed.iter().chain(&second.routed) {
        assert_eq!(
            routed.execution.agent_id.as_deref(),
            Some(agents[&routed.worker_name].as_str())
        );
        assert_eq!(routed.execution.controller_id, None);
        assert_eq!(
            routed.execution.worker_name.as_deref(),
            Some(routed.worker_name.as_str())
        );
    }
    // The rest wait, saying why.
    let waiting = store.get_execution(*ids.last().unwrap()).await.unwrap();
    assert_eq!(waiting.status, ExecutionStatus::Requested);
    assert_eq!(
        waiting.to_view().waiting_reason.as_deref(),
        Some("waiting for a free worker with runtime shell (3 capable, all busy)")
    );

    // Drain everything, finishing what runs after each pass; the bound holds at every pass.
    let mut done = 10;
    let mut routed: Vec<(i64, String)> = first
        .routed
        .iter()
        .chain(&second.routed)
        .map(|routed| (routed.execution.id, routed.worker_name.clone()))
        .collect();
    while done < 200 {
        // The least loaded worker gets the next one: free one slot of w-c (the largest).
        for (execution_id, worker) in routed.drain(..) {
            finish(&store, execution_id, &agents[&worker]).await;
        }
        let pass = route(&store).await;
        let loads = load(&store).await;
        for (name, slots) in &concurrency {
            assert!(
                loads[*name] <= *slots,
                "worker {name} runs {} > {slots}",
                loads[*name]
            );
        }
        assert!(!pass.routed.is_empty(), "free slots are filled");
        done += pass.routed.len();
        routed = pass
            .routed
            .iter()
            .map(|routed| (routed.execution.id, routed.worker_name.clone()))
            .collect();
    }
    assert_eq!(done, 200);
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_runtime_aliases_selectors_and_load() {
    let (database, store) = store_with_pack(PACK, 8).await;
    // hello_py asks for python >=3.8,<4 and a shell besides.
    let mut python = enrollment("py", &["python3", "sh"], &[], 4);
    python.runtimes[0].version = Some("3.11.4".into());
    store
        .enroll_worker(&python, "worker-py-1", None)
        .await
        .unwrap();
    store
        .enroll_worker(
            &enrollment("eu", &["shell"], &[("zone", "eu")], 4),
            "worker-eu-1",
            None,
        )
        .await
        .unwrap();
    let python = submit(&store, "workers.hello_py", 1).await[0];
    let zoned = submit(&store, "workers.zoned", 1).await[0];
    let ruby = submit(&store, "workers.ruby", 1).await[0];
    let shells = submit(&store, "workers.hello_sh", 2).await;
    route(&store).await;
    let worker_of = |id: i64| {
        let store = store.clone();
        async move { store.get_execution(id).await.unwrap().worker_name }
    };
    assert_eq!(worker_of(python).await.as_deref(), Some("py"));
    assert_eq!(worker_of(zoned).await.as_deref(), Some("eu"));
    // Two shell executions over two equally loaded shell workers: one each (least loaded).
    let mut shell_workers = vec![worker_of(shells[0]).await, worker_of(shells[1]).await];
    shell_workers.sort();
    assert_eq!(
        shell_workers,
        vec![Some("eu".to_string()), Some("py".to_string())]
    );
    let waiting = store.get_execution(ruby).await.unwrap();
    assert_eq!(waiting.status, ExecutionStatus::Requested);
    assert_eq!(
        waiting.to_view().waiting_reason.as_deref(),
        Some("waiting for a worker with runtime ruby")
    );

    // Past its queue timeout it ends no-worker, naming why.
    let later = store.now().await.unwrap() + chrono::Duration::seconds(301);
    let pass = store
        .route_to_workers(500, |workers, queued| {
            choose_worker(workers, queued, later, TIMEOUT)
        })
        .await
        .unwrap();
    assert_eq!(pass.given_up, vec![ruby]);
    let ended = store.get_execution(ruby).await.unwrap();
    assert_eq!(ended.status, ExecutionStatus::Failed);
    assert_eq!(ended.failure_kind, Some(FailureKind::NoWorker));
    assert_eq!(
        ended.error.as_deref(),
        Some("no worker took it within its queue timeout of 300s: waiting for a worker with runtime ruby")
    );
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_goes_offline_and_its_executions_end_worker_lost() {
    let (database, store) = store_with_pack(PACK, 8).await;
    store
        .enroll_worker(
            &enrollment("gone", &["shell"], &[], 2),
            "worker-gone-1",
            None,
        )
        .await
        .unwrap();
    let idempotent = submit(&store, "workers.slow", 1).await[0];
    let plain = submit(&store, "workers.hello_sh", 1).await[0];
    assert_eq!(route(&store).await.routed.len(), 2);
    let running = TransitionFields {
        from_agent: Some("worker-gone-1".into()),
        ..Default::default()
    };
    store
        .transition(idempotent, ExecutionStatus::Running, running)
        .await
        .unwrap()
        .unwrap();

    // A heartbeat keeps it online; silence past the limit does not.
    store.worker_heartbeat("worker-gone-1").await.unwrap();
    assert!(store
        .workers_gone_silent(Duration::from_secs(15))
        .await
        .unwrap()
        .is_empty());
    psql(
        &database.url,
        "UPDATE workers SET last_heartbeat = now() - interval '1 minute'",
    );
    assert_eq!(
        store
            .workers_gone_silent(Duration::from_secs(15))
            .await
            .unwrap(),
        vec!["gone".to_string()]
    );
    assert_eq!(
        store.get_worker("gone").await.unwrap().status,
        WorkerStatus::Offline
    );
    let mut ended = store
        .end_lost_worker_executions(Duration::from_secs(60))
        .await
        .unwrap();
    ended.sort();
    assert_eq!(ended, vec![idempotent, plain]);
    for id in [idempotent, plain] {
        let execution = store.get_execution(id).await.unwrap();
        assert_eq!(execution.status, ExecutionStatus::Failed);
        assert_eq!(
            execution.failure_kind,
            Some(FailureKind::WorkerLost),
            "{execution:?}"
        );
    }
    // The idempotent one was requeued once; nothing is left non-terminal on the lost worker.
    let retries: Vec<_> = store
        .list_executions(&attune_store::ExecutionFilter {
            status: None,
            action_ref: None,
            limit: 100,
            before_id: None,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|execution| execution.retry_of == Some(idempotent))
        .collect();
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].status, ExecutionStatus::Requested);
    // A heartbeat brings the worker back, and the retry goes to it.
    store.worker_heartbeat("worker-gone-1").await.unwrap();
    assert_eq!(
        store.get_worker("gone").await.unwrap().status,
        WorkerStatus::Online
    );
    let pass = route(&store).await;
    assert_eq!(pass.routed.len(), 1);
    assert_eq!(pass.routed[0].execution.retry_of, Some(idempotent));
    database.drop_database().await.unwrap();
}

/// Whether a session of database `name` waits for a lock.
fn waits_on_a_lock(name: &str) -> bool {
    let output = std::process::Command::new("psql")
        .args([
            &TestEnvironmentUrl::admin(),
            "-qAtc",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' AND wait_event_type = 'Lock'"
            ),
        ])
        .output()
        .expect("run psql");
    String::from_utf8_lossy(&output.stdout).trim() != "0"
}

/// The admin database URL of the test environment.
struct TestEnvironmentUrl;

impl TestEnvironmentUrl {
    fn admin() -> String {
        attune_store::testing::TestEnvironment::from_env().admin_database_url
    }
}

/// Runs one SQL statement (the test ages a heartbeat).
fn psql(url: &str, query: &str) {
    let status = std::process::Command::new("psql")
        .args([url, "-qAtc", query])
        .status()
        .expect("run psql");
    assert!(status.success(), "psql {query}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_with_a_default_image_takes_only_what_no_worker_could() {
    let (database, store) = store_with_pack(PACK, 8).await;
    let ruby = submit(&store, "workers.ruby", 1).await[0];
    // Before any router looked at it, no controller claims an action without an image, with
    // or without a default image.
    assert!(store
        .claim_requested("c-1", 10, true)
        .await
        .unwrap()
        .is_empty());
    route(&store).await;
    assert!(
        store
            .claim_requested("c-1", 10, false)
            .await
            .unwrap()
            .is_empty(),
        "a controller without docker.default_image never takes it"
    );
    let claimed = store.claim_requested("c-1", 10, true).await.unwrap();
    assert_eq!(
        claimed.iter().map(|row| row.id).collect::<Vec<_>>(),
        vec![ruby],
        "with a default image, a controller takes what no worker could"
    );
    database.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_no_worker_can_take_never_hides_new_work() {
    let (database, store) = store_with_pack(PACK, 8).await;
    store
        .enroll_worker(&enrollment("sh", &["shell"], &[], 4), "worker-sh-1", None)
        .await
        .unwrap();
    // Three ruby executions wait (no ruby worker) and fill a batch of two...
    submit(&store, "workers.ruby", 3).await;
    let now = store.now().await.unwrap();
    let small_batch = |store: Store| async move {
        store
            .route_to_workers(2, |workers, queued| {
                choose_worker(workers, queued, now, TIMEOUT)
            })
            .await
            .unwrap()
    };
    assert_eq!(small_batch(store.clone()).await.waiting, 2);
    // ...yet a shell execution submitted after them is routed at the next pass.
    let shell = submit(&store, "workers.hello_sh", 1).await[0];
    let pass = small_batch(store.clone()).await;
    assert_eq!(
        pass.routed
            .iter()
            .map(|routed| routed.execution.id)
            .collect::<Vec<_>>(),
        vec![shell]
    );
    database.drop_database().await.unwrap();
}
