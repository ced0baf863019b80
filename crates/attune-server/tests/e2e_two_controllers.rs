//! Two controllers end to end: two attune-server instances with different controller ids share
//! one Postgres database and one RabbitMQ; server A runs containers on the host's Docker engine,
//! server B on a second engine (scripts/second-engine.sh, address in
//! `ATTUNE_TEST_SECOND_DOCKER_HOST`, default `unix:///run/attune-engine2/docker.sock`).
//!
//! Checked: executions submitted through either API spread over both controllers, succeed and
//! run on the engine of the controller that ran them, which the execution view names
//! (`controller_id`); nothing is left on either engine after both servers stop; restarting one
//! server leaves the other's running execution alone; when one server crashes the other takes
//! its executions over (`controller-lost`; an idempotent one is retried on the survivor) and
//! the crashed one removes its leftovers when it comes back; a cancel reaches an execution
//! whichever API it is sent to; pools and containers of both controllers are listed by either
//! API.
//!
//! Placement is forced where a test depends on it, never guessed: with `executor.concurrency`
//! 1 (or 2) per controller, long naps submitted together must land on both controllers. Where
//! an execution ran is read from the engines (which one holds its container, with which
//! labels), not from the API under test.
//!
//! Needs Docker, the second engine, RabbitMQ, Postgres, busybox:1.36 on both engines and the
//! agent of scripts/build-agent.sh (`make test` provides all of them). Without the second
//! engine every test here fails, saying how to start it: none is skipped.

use attune_protocol::api::{ExecutionStatus, ExecutionView};
use attune_testkit::{ContainerGuard, Engine, TestClient, TestServer};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// How long any one awaited state may take.
const DEADLINE: Duration = Duration::from_secs(120);

/// Controller liveness (small, so that a crash is noticed quickly): a controller beats every
/// second and is presumed lost six seconds after its last beat.
const CONTROLLER_GRACE_SECONDS: u64 = 6;
const LIVENESS: [(&str, &str); 2] = [
    ("ATTUNE__EXECUTOR__CONTROLLER_GRACE_SECONDS", "6"),
    ("ATTUNE__EXECUTOR__CONTROLLER_HEARTBEAT_SECONDS", "1"),
];

/// The default agent lease (`executor.lease_seconds`): a lost controller's execution is taken
/// over within lease + grace.
const LEASE_SECONDS: u64 = 20;

/// Slack on top of lease + grace for polling, container and database round trips.
const TAKEOVER_SLACK: Duration = Duration::from_secs(15);

fn hello_pack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/packs/hello")
}

fn test_pack(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/packs")
        .join(name)
}

/// One server with its client and a guard removing its containers from its engine whatever
/// happens in the test.
struct Side {
    name: &'static str,
    server: TestServer,
    client: TestClient,
    _guard: ContainerGuard,
}

impl Side {
    fn new(name: &'static str, server: TestServer) -> Side {
        Side {
            name,
            client: TestClient::new(&server).with_deadline(DEADLINE),
            _guard: server.container_guard(),
            server,
        }
    }

    fn engine(&self) -> &Engine {
        &self.server.engine
    }

    fn controller_id(&self) -> &str {
        &self.server.controller_id
    }
}

/// Server A (index 0) on the host's engine and server B (index 1) on the second one, sharing
/// A's database.
struct Pair {
    sides: Vec<Side>,
    settings: Vec<(&'static str, &'static str)>,
}

/// Starts both servers with `settings` and registers `packs` through A (the database is
/// shared, so B sees them).
async fn start_pair(settings: &[(&'static str, &'static str)], packs: &[PathBuf]) -> Pair {
    // Fails, saying how to start it, when the second engine is not there.
    let second = Engine::second();
    let mut all = vec![("ATTUNE__EXECUTOR__KILL_GRACE_SECONDS", "1")];
    all.extend_from_slice(settings);
    let a = TestServer::builder()
        .settings(&all)
        .start()
        .await
        .expect("start server A (host engine)");
    let b = TestServer::builder()
        .engine(&second)
        .share_database_with(&a)
        .settings(&all)
        .start()
        .await
        .expect("start server B (second engine)");
    assert_ne!(a.controller_id, b.controller_id);
    assert_eq!(a.database.name, b.database.name, "one shared database");
    assert_ne!(a.engine, b.engine, "two engines");
    let pair = Pair {
        sides: vec![Side::new("A", a), Side::new("B", b)],
        settings: all,
    };
    for pack in packs {
        pair.a().client.register_dir(pack).await;
    }
    pair
}

impl Pair {
    fn a(&self) -> &Side {
        &self.sides[0]
    }

    fn b(&self) -> &Side {
        &self.sides[1]
    }

    /// The index of the side whose controller id this is.
    fn side_of_controller(&self, controller_id: &str) -> usize {
        self.sides
            .iter()
            .position(|side| side.controller_id() == controller_id)
            .unwrap_or_else(|| panic!("{controller_id} is neither A's nor B's controller"))
    }

    /// The index of the side whose engine holds a container; fails unless exactly one does,
    /// and unless the container carries that side's controller id.
    fn side_holding(&self, container_id: &str) -> usize {
        let holders: Vec<usize> = (0..self.sides.len())
            .filter(|&index| self.sides[index].engine().has_container(container_id))
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "container {container_id} is on exactly one engine (found on sides {holders:?})"
        );
        let index = holders[0];
        let side = &self.sides[index];
        assert_eq!(
            label(side.engine(), container_id, "attune.controller").as_deref(),
            Some(side.controller_id()),
            "container {container_id} on {}'s engine carries {}'s controller id",
            side.name,
            side.name
        );
        index
    }

    /// Waits until the execution runs, and returns it with the index of the side running it
    /// (found from which engine holds its container, and that container's labels).
    async fn running_side(&self, execution_id: i64) -> (ExecutionView, usize) {
        self.running_side_via(0, execution_id).await
    }

    /// [`Pair::running_side`], asking the API of side `via` (the other may be down).
    async fn running_side_via(&self, via: usize, execution_id: i64) -> (ExecutionView, usize) {
        let running = self.sides[via].client.wait_running(execution_id).await;
        assert_eq!(running.status, ExecutionStatus::Running, "{running:?}");
        let container_id = running.container_id.clone().expect("container id");
        let index = self.side_holding(&container_id);
        // Per-execution containers name their execution; warm ones carry none.
        if let Some(execution) = label(
            self.sides[index].engine(),
            &container_id,
            "attune.execution",
        ) {
            assert_eq!(execution, execution_id.to_string(), "{running:?}");
        }
        (running, index)
    }

    /// Restarts one side (a drain when it is running, a replacement after a crash) with the
    /// pair's settings; returns once its API answers, which is after its start-up reconcile.
    async fn restart_side(&mut self, index: usize) {
        let side = self.sides.remove(index);
        let Side {
            name,
            server,
            _guard,
            ..
        } = side;
        let server = server
            .restart(&self.settings)
            .await
            .unwrap_or_else(|error| panic!("restart server {name}: {error}"));
        let client = TestClient::new(&server).with_deadline(DEADLINE);
        // The listener accepts at once; the API answers after the start-up reconcile.
        let _ = client.executions().await;
        self.sides.insert(
            index,
            Side {
                name,
                server,
                client,
                _guard,
            },
        );
    }

    /// Every execution retrying `execution_id`, asking the API of side `via`.
    async fn retries_of(&self, via: usize, execution_id: i64) -> Vec<ExecutionView> {
        self.sides[via]
            .client
            .executions()
            .await
            .into_iter()
            .filter(|execution| execution.retry_of == Some(execution_id))
            .collect()
    }

    /// Stops both servers (B first; the last stop drops the shared database), then asserts
    /// that neither engine holds a container of either controller.
    async fn finish(mut self) {
        let ids: Vec<String> = self
            .sides
            .iter()
            .map(|side| side.controller_id().to_string())
            .collect();
        let engines: Vec<Engine> = self
            .sides
            .iter()
            .map(|side| side.engine().clone())
            .collect();
        while let Some(side) = self.sides.pop() {
            let Side { server, _guard, .. } = side;
            server.finish().await;
        }
        assert_nothing_left(&engines, &ids);
    }
}

/// Neither engine holds a container labelled with either controller id.
fn assert_nothing_left(engines: &[Engine], controller_ids: &[String]) {
    for engine in engines {
        for controller_id in controller_ids {
            let left = engine.containers_of(controller_id);
            assert!(
                left.is_empty(),
                "containers of {controller_id} left on {engine:?}: {left:?}"
            );
        }
    }
}

/// A label of a container, if it has it.
fn label(engine: &Engine, container_id: &str, key: &str) -> Option<String> {
    let output = engine
        .command()
        .args(["container", "inspect", "--format"])
        .arg(format!("{{{{index .Config.Labels \"{key}\"}}}}"))
        .arg(container_id)
        .output()
        .expect("docker container inspect");
    assert!(
        output.status.success(),
        "inspect {container_id} on {engine:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!value.is_empty() && value != "<no value>").then_some(value)
}

/// Submits one long nap through each API at concurrency 1, so each controller runs one;
/// returns the ids by the index of the side running them.
async fn one_nap_each(pair: &Pair, action: &str, seconds: u64) -> [i64; 2] {
    let submitted = [
        pair.a()
            .client
            .submit_ok(action, json!({"seconds": seconds}))
            .await,
        pair.b()
            .client
            .submit_ok(action, json!({"seconds": seconds}))
            .await,
    ];
    let mut by_side = [0; 2];
    for id in submitted {
        let (_, index) = pair.running_side(id).await;
        assert_eq!(
            by_side[index], 0,
            "at concurrency 1 the controllers run one nap each"
        );
        by_side[index] = id;
    }
    by_side
}

/// (a) Executions submitted alternately through A's and B's APIs spread over both controllers
/// (each runs at most two at once, so four long naps must), every one succeeds, and each long
/// one ran on its controller's engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_spread_over_both_controllers_and_run_on_their_engines() {
    let pair = start_pair(
        &[("ATTUNE__EXECUTOR__CONCURRENCY", "2")],
        &[hello_pack(), test_pack("lifecycle")],
    )
    .await;
    let mut naps = Vec::new();
    for index in 0..4 {
        let client = &pair.sides[index % 2].client;
        naps.push(
            client
                .submit_ok("lifecycle.nap", json!({"seconds": 6}))
                .await,
        );
    }
    let mut greetings = Vec::new();
    for index in 0..8 {
        let client = &pair.sides[index % 2].client;
        let name = format!("two-{index}");
        let id = client.submit_ok("hello.greet", json!({"name": name})).await;
        greetings.push((id, name));
    }

    let mut ran_on = HashMap::new();
    for &nap in &naps {
        let (_, index) = pair.running_side(nap).await;
        ran_on.insert(nap, index);
    }
    let mut per_side = [0; 2];
    for index in ran_on.values() {
        per_side[*index] += 1;
    }
    assert_eq!(
        per_side,
        [2, 2],
        "four long naps on two controllers of concurrency 2: two each ({ran_on:?})"
    );

    for (turn, &nap) in naps.iter().enumerate() {
        // Read through both APIs: the database is the same.
        let done = pair.sides[turn % 2].client.wait_terminal(nap).await;
        assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
        assert_eq!(done.result.as_ref().unwrap()["slept"], 6);
    }
    for (turn, (id, name)) in greetings.iter().enumerate() {
        let done = pair.sides[(turn + 1) % 2].client.wait_terminal(*id).await;
        assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
        assert_eq!(
            done.result.as_ref().unwrap()["greeting"],
            format!("Hello, {name}!")
        );
    }
    pair.finish().await;
}

/// (b) Per-execution and warm containers of both controllers are all gone once both servers
/// have stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_left_on_either_engine_after_both_servers_stop() {
    let pair = start_pair(
        &[("ATTUNE__EXECUTOR__CONCURRENCY", "1")],
        &[hello_pack(), test_pack("lifecycle")],
    )
    .await;
    let naps = one_nap_each(&pair, "lifecycle.nap", 3).await;
    // Then warm hello.quick containers (min_idle 1), through both APIs.
    let mut ids = naps.to_vec();
    for index in 0..6 {
        let client = &pair.sides[index % 2].client;
        ids.push(
            client
                .submit_ok("hello.quick", json!({"name": format!("q{index}")}))
                .await,
        );
    }
    let mut warm = HashSet::new();
    for id in ids {
        let done = pair.a().client.wait_terminal(id).await;
        assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
        if done.action == "hello.quick" {
            warm.insert(done.container_id.expect("container id"));
        }
    }
    // Something is there to clean up: the warm containers are kept after their executions.
    let kept: usize = pair
        .sides
        .iter()
        .map(|side| side.server.containers().len())
        .sum();
    assert!(kept >= 1, "warm hello.quick containers are kept: {warm:?}");
    pair.finish().await;
}

/// (c) Every execution that ran names the controller that ran it, the same through both APIs,
/// and for the long ones that is the controller whose engine held the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_execution_names_the_controller_that_ran_it() {
    let pair = start_pair(
        &[("ATTUNE__EXECUTOR__CONCURRENCY", "1")],
        &[hello_pack(), test_pack("lifecycle")],
    )
    .await;
    let naps = one_nap_each(&pair, "lifecycle.nap", 3).await;
    for (index, nap) in naps.iter().enumerate() {
        let running = pair.b().client.execution(*nap).await;
        assert_eq!(
            running.controller_id.as_deref(),
            Some(pair.sides[index].controller_id()),
            "a running execution names the controller running it: {running:?}"
        );
    }
    let mut ids = naps.to_vec();
    for index in 0..6 {
        let client = &pair.sides[index % 2].client;
        ids.push(
            client
                .submit_ok("hello.greet", json!({"name": format!("c{index}")}))
                .await,
        );
    }
    let mut seen = HashSet::new();
    for id in ids {
        let through_a = pair.a().client.wait_terminal(id).await;
        assert_eq!(
            through_a.status,
            ExecutionStatus::Succeeded,
            "{through_a:?}"
        );
        let through_b = pair.b().client.execution(id).await;
        let controller_id = through_a
            .controller_id
            .clone()
            .unwrap_or_else(|| panic!("execution {id} names no controller: {through_a:?}"));
        assert_eq!(
            through_b.controller_id.as_deref(),
            Some(controller_id.as_str()),
            "both APIs agree on execution {id}"
        );
        let index = pair.side_of_controller(&controller_id);
        if let Some(expected) = naps.iter().position(|nap| *nap == id) {
            assert_eq!(
                index, expected,
                "execution {id} names the controller whose engine ran it"
            );
        }
        seen.insert(index);
    }
    assert_eq!(seen.len(), 2, "both controllers appear");
    // On the wire the field is `controller_id`.
    let raw: Value = pair
        .b()
        .client
        .get_json(&format!("/api/v1/executions/{}", naps[0]))
        .await;
    assert_eq!(
        raw["controller_id"],
        json!(pair.a().controller_id()),
        "{raw}"
    );
    pair.finish().await;
}

/// One round of (d): a long nap runs on one side; the other is drain-restarted (after running
/// a short nap of its own, which the drain lets finish); the long nap is still running once
/// the restarted server answers, and then succeeds. Returns the index of the side that ran
/// the long nap.
async fn restart_the_other_while_one_runs(pair: &mut Pair, submit_through: usize) -> usize {
    let long = pair.sides[submit_through]
        .client
        .submit_ok("lifecycle.nap", json!({"seconds": 20}))
        .await;
    let (running, runner) = pair.running_side(long).await;
    let other = 1 - runner;
    // At concurrency 1 the runner is full: this one must run on the other side.
    let short = pair.sides[other]
        .client
        .submit_ok("lifecycle.nap", json!({"seconds": 2}))
        .await;
    let (_, short_runner) = pair.running_side(short).await;
    assert_eq!(short_runner, other);

    pair.restart_side(other).await;
    let short_done = pair.sides[other].client.execution(short).await;
    assert_eq!(
        short_done.status,
        ExecutionStatus::Succeeded,
        "the drain let the restarted server's own nap finish: {short_done:?}"
    );
    let now = pair.sides[other].client.execution(long).await;
    assert_eq!(
        now.status,
        ExecutionStatus::Running,
        "{}'s execution survives {}'s restart: {now:?}",
        pair.sides[runner].name,
        pair.sides[other].name
    );
    assert_eq!(now.container_id, running.container_id);
    let done = pair.sides[other].client.wait_terminal(long).await;
    assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
    assert_eq!(done.result.as_ref().unwrap()["slept"], 20);
    assert_eq!(
        pair.a().server.database.failure_kind(long).await,
        None,
        "{done:?}"
    );
    runner
}

/// (d) A drain-restart of one server leaves the other's running execution alone: it keeps
/// running (the restarted server's start-up reconcile does not fail it) and succeeds. Two
/// rounds, submitted through A then through B, so normally both directions are exercised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_one_server_leaves_the_other_servers_execution_running() {
    let mut settings = vec![("ATTUNE__EXECUTOR__CONCURRENCY", "1")];
    settings.extend_from_slice(&LIVENESS);
    let mut pair = start_pair(&settings, &[test_pack("lifecycle")]).await;
    let first = restart_the_other_while_one_runs(&mut pair, 0).await;
    let second = restart_the_other_while_one_runs(&mut pair, 1 - first).await;
    eprintln!(
        "long naps ran on {} then {}",
        pair.sides[first].name, pair.sides[second].name
    );
    let stuck = pair.a().client.unfinished_executions().await;
    assert!(stuck.is_empty(), "no execution stuck: {stuck:?}");
    pair.finish().await;
}

/// Starts a pair with small controller liveness settings, runs `action` (a nap of `seconds`)
/// and crashes the server running it. Returns the pair, the execution, the crashed side's
/// index and when it crashed.
async fn crash_the_runner(action: &str, seconds: u64) -> (Pair, i64, usize, tokio::time::Instant) {
    let mut settings = vec![("ATTUNE__EXECUTOR__CONCURRENCY", "2")];
    settings.extend_from_slice(&LIVENESS);
    let mut pair = start_pair(&settings, &[test_pack("lifecycle")]).await;
    let id = pair
        .a()
        .client
        .submit_ok(action, json!({"seconds": seconds}))
        .await;
    let (running, crashed) = pair.running_side(id).await;
    pair.sides[crashed].server.crash().await;
    let at = tokio::time::Instant::now();
    let container_id = running.container_id.expect("container id");
    assert!(
        pair.sides[crashed].engine().has_container(&container_id),
        "a crash leaves the container"
    );
    (pair, id, crashed, at)
}

/// Waits, through the survivor's API, until the crashed server's execution has ended; fails
/// unless that happens within lease + grace (+ slack) of the crash.
async fn wait_taken_over(
    pair: &Pair,
    survivor: usize,
    id: i64,
    crashed_at: tokio::time::Instant,
) -> ExecutionView {
    let allowed = Duration::from_secs(LEASE_SECONDS + CONTROLLER_GRACE_SECONDS) + TAKEOVER_SLACK;
    let done = pair.sides[survivor]
        .client
        .with_deadline(allowed)
        .wait_terminal(id)
        .await;
    eprintln!(
        "execution {id} ended {:?} after the crash: {:?} ({:?})",
        crashed_at.elapsed(),
        done.status,
        done.error
    );
    assert!(crashed_at.elapsed() <= allowed + Duration::from_secs(1));
    done
}

/// (e) A crashed server's non-idempotent execution is taken over by the survivor and failed
/// as `controller-lost` within lease + grace, with no retry; when the crashed server comes
/// back it removes its leftover container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_servers_execution_is_failed_as_controller_lost_by_the_survivor() {
    let (mut pair, id, crashed, crashed_at) = crash_the_runner("lifecycle.nap", 90).await;
    let survivor = 1 - crashed;
    let done = wait_taken_over(&pair, survivor, id, crashed_at).await;
    assert_eq!(done.status, ExecutionStatus::Failed, "{done:?}");
    assert_eq!(
        pair.sides[survivor]
            .server
            .database
            .failure_kind(id)
            .await
            .as_deref(),
        Some("controller-lost"),
        "{done:?}"
    );
    let retries = pair.retries_of(survivor, id).await;
    assert!(retries.is_empty(), "never retried: {retries:?}");

    pair.restart_side(crashed).await;
    pair.sides[crashed]
        .server
        .wait_no_containers(DEADLINE)
        .await;
    let stuck = pair.a().client.unfinished_executions().await;
    assert!(stuck.is_empty(), "no execution stuck: {stuck:?}");
    pair.finish().await;
}

/// (e) A crashed server's idempotent execution is failed by the survivor and retried once
/// (`retry_of`), the retry runs to success on the survivor; the crashed server, restarted,
/// removes its leftover container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_servers_idempotent_execution_is_retried_on_the_survivor() {
    let (mut pair, id, crashed, crashed_at) = crash_the_runner("lifecycle.nap_idempotent", 8).await;
    let survivor = 1 - crashed;
    let done = wait_taken_over(&pair, survivor, id, crashed_at).await;
    assert_eq!(done.status, ExecutionStatus::Failed, "{done:?}");
    eprintln!(
        "failure kind of {id}: {:?}",
        pair.a().server.database.failure_kind(id).await
    );

    let give_up = tokio::time::Instant::now() + DEADLINE;
    let retry = loop {
        let mut retries = pair.retries_of(survivor, id).await;
        assert!(retries.len() <= 1, "retried once: {retries:?}");
        if let Some(retry) = retries.pop() {
            break retry;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no retry of {id} requested: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, runner) = pair.running_side_via(survivor, retry.id).await;
    assert_eq!(runner, survivor, "the retry runs on the survivor");
    let retry_done = pair.sides[survivor].client.wait_terminal(retry.id).await;
    assert_eq!(
        retry_done.status,
        ExecutionStatus::Succeeded,
        "{retry_done:?}"
    );
    assert_eq!(retry_done.retry_of, Some(id));
    assert_eq!(
        retry_done.controller_id.as_deref(),
        Some(pair.sides[survivor].controller_id())
    );

    pair.restart_side(crashed).await;
    pair.sides[crashed]
        .server
        .wait_no_containers(DEADLINE)
        .await;
    let stuck = pair.a().client.unfinished_executions().await;
    assert!(stuck.is_empty(), "no execution stuck: {stuck:?}");
    pair.finish().await;
}

/// (f) A cancel sent to one server's API stops an execution running on the other, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_either_api_stops_an_execution_on_the_other_controller() {
    let pair = start_pair(
        &[("ATTUNE__EXECUTOR__CONCURRENCY", "1")],
        &[test_pack("lifecycle")],
    )
    .await;
    let naps = one_nap_each(&pair, "lifecycle.nap", 90).await;
    for (runner, nap) in naps.iter().enumerate() {
        let through = &pair.sides[1 - runner];
        let response = through.client.cancel(*nap).await;
        assert_eq!(
            response.status(),
            202,
            "cancel of {}'s execution through {}'s API",
            pair.sides[runner].name,
            through.name
        );
    }
    for (runner, nap) in naps.iter().enumerate() {
        let done = pair.sides[runner].client.wait_terminal(*nap).await;
        assert_eq!(done.status, ExecutionStatus::Canceled, "{done:?}");
    }
    for side in &pair.sides {
        side.server.wait_no_containers(DEADLINE).await;
    }
    pair.finish().await;
}

/// (g) With warm pools on both controllers, `GET /api/v1/pools` and `/api/v1/containers` on
/// either server list the entries of both, each naming its controller, and each listed
/// container is on its controller's engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_containers_of_both_controllers_are_listed_by_either_api() {
    let pair = start_pair(
        &[("ATTUNE__EXECUTOR__CONCURRENCY", "1")],
        &[test_pack("pooled")],
    )
    .await;
    // pooled.slow sleeps a second: submitted together at concurrency 1, one runs on each.
    let submitted = [
        pair.a().client.submit_ok("pooled.slow", json!({})).await,
        pair.b().client.submit_ok("pooled.slow", json!({})).await,
    ];
    let mut ran_on = HashSet::new();
    for id in submitted {
        let done = pair.a().client.wait_terminal(id).await;
        assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
        // The warm container went back to its pool (idle_timeout 30s): it is still there.
        ran_on.insert(pair.side_holding(&done.container_id.expect("container id")));
    }
    assert_eq!(ran_on.len(), 2, "one pooled.slow on each controller");

    let both: HashSet<String> = pair
        .sides
        .iter()
        .map(|side| side.controller_id().to_string())
        .collect();
    for side in &pair.sides {
        let pools = side.client.pools().await;
        let controllers: HashSet<String> = pools
            .iter()
            .map(|pool| pool.controller_id.clone())
            .collect();
        assert_eq!(
            controllers, both,
            "{}'s /api/v1/pools lists both controllers' pools: {pools:?}",
            side.name
        );
        assert!(pools.iter().all(|pool| pool.pack == "pooled"), "{pools:?}");

        let containers = side.client.containers().await;
        let controllers: HashSet<String> = containers
            .iter()
            .map(|container| container.controller_id.clone())
            .collect();
        assert_eq!(
            controllers, both,
            "{}'s /api/v1/containers lists both controllers' containers: {containers:?}",
            side.name
        );
        for container in &containers {
            let owner = pair.side_of_controller(&container.controller_id);
            assert_eq!(
                pair.side_holding(&container.container_id),
                owner,
                "{container:?} is on its controller's engine"
            );
        }
        // Raw JSON: every row has the field.
        for path in ["/api/v1/pools", "/api/v1/containers"] {
            let raw: Value = side.client.get_json(path).await;
            let items = raw["items"].as_array().expect("items");
            assert!(
                items.iter().all(|item| item["controller_id"].is_string()),
                "{path}: {raw}"
            );
        }
    }
    pair.finish().await;
}
