//! Action-level `isolation:`, `pool:` and `idempotent:`: each valid form, the defaults, and
//! each invalid input with its message.

mod common;

use attune_pack::{load_pack_dir, ActionDefinition, PackError};
use attune_protocol::api::{Isolation, PoolSpec};
use common::pack_with_action;

/// The first lines of every test action; `pool:` maps therefore start on line 6.
const HEADER: &str = "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\n";

fn load_action(extra_yaml: &str) -> Result<ActionDefinition, PackError> {
    let directory = pack_with_action(&format!("{HEADER}{extra_yaml}"));
    load_pack_dir(directory.path()).map(|pack| pack.actions[0].clone())
}

/// Loads an action with a container and the block-style `pool:` map `pool_yaml`.
fn load_pool(pool_yaml: &str) -> Result<ActionDefinition, PackError> {
    load_action(&format!("container: busybox:1.36\npool:\n{pool_yaml}"))
}

fn pool_error(pool_yaml: &str) -> String {
    load_pool(pool_yaml)
        .expect_err(&format!("pool {pool_yaml:?} must be rejected"))
        .to_string()
}

#[test]
fn nothing_set_leaves_the_choice_to_the_server() {
    let action = load_action("container: busybox:1.36\n").expect("load action");
    assert_eq!(action.isolation, None);
    assert_eq!(action.pool, None);
    assert!(!action.idempotent);
}

#[test]
fn pooled_action_with_full_pool_loads() {
    let action = load_action(
        "container: busybox:1.36\nisolation: pooled\npool: {min_idle: 2, max: 8, idle_timeout: 5m, max_uses: 100}\nidempotent: true\n",
    )
    .expect("load action");
    assert_eq!(action.isolation, Some(Isolation::Pooled));
    assert_eq!(
        action.pool,
        Some(PoolSpec {
            min_idle: 2,
            max: 8,
            idle_timeout_seconds: 300,
            max_uses: 100,
        })
    );
    assert!(action.idempotent);

    let view = action.to_view();
    assert_eq!(view.isolation, Some(Isolation::Pooled));
    assert_eq!(view.pool, action.pool);
    assert!(view.idempotent);
}

#[test]
fn pool_alone_makes_the_action_pooled_with_defaults_for_missing_keys() {
    let action = load_pool("  max: 2\n").expect("load action");
    assert_eq!(action.isolation, Some(Isolation::Pooled));
    assert_eq!(
        action.pool,
        Some(PoolSpec {
            max: 2,
            ..PoolSpec::default()
        })
    );

    let action = load_action("container: busybox:1.36\npool: {}\n").expect("empty pool map");
    assert_eq!(action.isolation, Some(Isolation::Pooled));
    assert_eq!(action.pool, Some(PoolSpec::default()));

    let action = load_pool("  min_idle: 0\n  max: 1\n  max_uses: 1\n").expect("smallest pool");
    assert_eq!(
        action.pool,
        Some(PoolSpec {
            min_idle: 0,
            max: 1,
            idle_timeout_seconds: 300,
            max_uses: 1,
        })
    );

    let action = load_pool("  min_idle: 256\n  max: 256\n").expect("largest pool");
    assert_eq!(action.pool.map(|pool| pool.max), Some(256));
}

#[test]
fn pooled_isolation_without_pool_keeps_the_server_defaults() {
    let action =
        load_action("container: {image: busybox:1.36}\nisolation: pooled\n").expect("load");
    assert_eq!(action.isolation, Some(Isolation::Pooled));
    assert_eq!(action.pool, None);
}

#[test]
fn per_execution_isolation_needs_no_container() {
    let action = load_action("isolation: per-execution\nidempotent: false\n").expect("load");
    assert_eq!(action.isolation, Some(Isolation::PerExecution));
    assert_eq!(action.pool, None);
    assert!(!action.idempotent);
}

#[test]
fn idle_timeouts_accept_durations_and_seconds() {
    for (written, seconds) in [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3_600),
        ("1h30m", 5_400),
        ("24h", 86_400),
        ("1s", 1),
        ("90", 90),
        ("\"120\"", 120),
        ("\"2m\"", 120),
    ] {
        let action = load_pool(&format!("  idle_timeout: {written}\n"))
            .unwrap_or_else(|error| panic!("idle_timeout {written}: {error}"));
        assert_eq!(
            action.pool.map(|pool| pool.idle_timeout_seconds),
            Some(seconds),
            "{written}"
        );
    }
    let action = load_pool("  idle_timeout_seconds: 45\n").expect("long key name");
    assert_eq!(action.pool.map(|pool| pool.idle_timeout_seconds), Some(45));
}

#[test]
fn pool_ranges_are_checked_with_the_line_of_the_pool() {
    for (pool_yaml, message) in [
        (
            "  min_idle: 5\n  max: 4\n",
            "actions/echo.yaml line 6: pool: min_idle 5 is more than max 4",
        ),
        (
            "  max: 0\n",
            "actions/echo.yaml line 6: pool: max must be between 1 and 256, found 0",
        ),
        (
            "  max: 257\n",
            "actions/echo.yaml line 6: pool: max must be between 1 and 256, found 257",
        ),
        (
            "  min_idle: 9\n",
            "actions/echo.yaml line 6: pool: min_idle 9 is more than max 8",
        ),
        (
            "  max_uses: 0\n",
            "actions/echo.yaml line 6: pool: max_uses must be at least 1, found 0",
        ),
    ] {
        assert_eq!(pool_error(pool_yaml), message, "{pool_yaml:?}");
    }
    let error = load_pool("  max: 0\n").expect_err("max 0");
    assert!(
        matches!(error, PackError::Yaml { line: Some(6), .. }),
        "{error:?}"
    );
}

#[test]
fn bad_idle_timeouts_name_the_field_value_and_line() {
    let not_a_duration =
        "is not a duration such as \"30s\", \"5m\" or \"1h\", or a whole number of seconds";
    for (written, message) in [
        (
            "5 minutes",
            format!("\"5 minutes\" {not_a_duration} (write it without spaces)"),
        ),
        (
            "abc",
            format!("\"abc\" {not_a_duration}: expected number at 0"),
        ),
        ("0s", "must be between 1s and 24h, found \"0s\"".to_string()),
        ("0", "must be between 1s and 24h, found 0".to_string()),
        ("25h", "must be between 1s and 24h, found \"25h\"".to_string()),
        ("86401", "must be between 1s and 24h, found 86401".to_string()),
        (
            "1500ms",
            "\"1500ms\" is not a whole number of seconds".to_string(),
        ),
        ("-5", format!("-5 {not_a_duration}")),
        ("1.5", format!("1.5 {not_a_duration}")),
        (
            "[5m]",
            "invalid type: sequence, expected a duration such as \"30s\", \"5m\" or \"1h\", or a whole number of seconds".to_string(),
        ),
    ] {
        assert_eq!(
            pool_error(&format!("  max: 4\n  idle_timeout: {written}\n")),
            format!("actions/echo.yaml line 7: pool.idle_timeout: {message}"),
            "{written}"
        );
    }
}

#[test]
fn malformed_pools_are_rejected() {
    assert_eq!(
        pool_error("  min_idle: 1\n  maximum: 4\n"),
        "actions/echo.yaml line 7: pool: unknown field `maximum`, expected one of `min_idle`, `max`, `idle_timeout`, `idle_timeout_seconds`, `max_uses`"
    );
    assert_eq!(
        pool_error("  max: -1\n"),
        "actions/echo.yaml line 6: pool.max: invalid type: integer `-1`, expected u32"
    );
    assert_eq!(
        pool_error("  max_uses: lots\n"),
        "actions/echo.yaml line 6: pool.max_uses: invalid type: string \"lots\", expected u32"
    );
    assert_eq!(
        load_action("container: busybox\npool: 4\n")
            .expect_err("pool is a number")
            .to_string(),
        "actions/echo.yaml line 5: pool: invalid type: integer `4`, expected a map with min_idle, max, idle_timeout, max_uses"
    );
}

#[test]
fn isolation_and_idempotent_values_are_checked() {
    assert_eq!(
        load_action("container: busybox\nisolation: shared\n")
            .expect_err("unknown isolation")
            .to_string(),
        "actions/echo.yaml line 5: isolation: unknown variant `shared`, expected `per-execution` or `pooled`"
    );
    let message = load_action("idempotent: maybe\n")
        .expect_err("idempotent is not a boolean")
        .to_string();
    assert!(
        message.starts_with("actions/echo.yaml line 4: idempotent: "),
        "{message}"
    );
}

#[test]
fn isolation_pool_and_container_must_agree() {
    let error = load_action("container: busybox\nisolation: per-execution\npool: {max: 2}\n")
        .expect_err("pool with per-execution isolation");
    assert!(matches!(error, PackError::InvalidField { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "actions/echo.yaml: isolation: is per-execution, but pool settings need isolation: pooled"
    );

    assert_eq!(
        load_action("isolation: pooled\n")
            .expect_err("pooled without container")
            .to_string(),
        "actions/echo.yaml: isolation: pooled isolation needs a container image (container: <image>)"
    );
    assert_eq!(
        load_action("pool: {max: 2}\n")
            .expect_err("pool without container")
            .to_string(),
        "actions/echo.yaml: pool: pool settings make the action pooled, which needs a container image (container: <image>)"
    );
}
