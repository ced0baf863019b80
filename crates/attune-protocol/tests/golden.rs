//! Golden JSON tests: the wire format is a contract with agents already deployed in images.
//! Each golden file must parse into the expected value and the value must serialize to exactly
//! the golden JSON; files under `golden/future/` carry fields a newer peer might add.

use attune_protocol::api::{ExecutionStatus, ExecutionView};
use attune_protocol::output::{bytes_to_text, text_to_bytes};
use attune_protocol::{
    AgentCommand, AgentEvent, AgentRegistration, DetectedRuntime, FailureKind, IncomingEvent, Job,
    JobOutcome, JobReport, OutputStream, ParameterDelivery, ParameterFormat, Runtime,
    PROTOCOL_VERSION,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Debug;
use std::path::PathBuf;

fn golden(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read golden file {}: {error}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("parse golden file {}: {error}", path.display()))
}

fn assert_golden<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &T) {
    let expected = golden(name);
    assert_eq!(
        serde_json::to_value(value).unwrap(),
        expected,
        "{name}: serialized form changed"
    );
    let parsed: T = serde_json::from_value(expected).unwrap();
    assert_eq!(&parsed, value, "{name}: parsed form changed");
}

fn sample_job() -> Job {
    let mut parameters = serde_json::Map::new();
    parameters.insert("name".into(), json!("Ada"));
    parameters.insert("token".into(), json!("s3cret"));
    Job {
        protocol_version: 1,
        execution_id: 42,
        action_ref: "hello.greet".into(),
        pack_ref: "hello".into(),
        runtime: Runtime::Shell,
        pack_dir: "/opt/attune/packs/hello".into(),
        entry_point: "actions/greet.sh".into(),
        parameters,
        secret_parameters: vec!["token".into()],
        parameter_delivery: ParameterDelivery::Env,
        parameter_format: ParameterFormat::Dotenv,
        timeout_seconds: 60,
        kill_grace_seconds: 5,
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        output_limit_bytes: 10485760,
        stream_logs: true,
        pack_sha256: None,
    }
}

#[test]
fn protocol_version_is_one() {
    assert_eq!(PROTOCOL_VERSION, 1);
}

#[test]
fn job_command() {
    assert_golden("job.json", &AgentCommand::Job(sample_job()));
}

#[test]
fn cancel_command() {
    assert_golden("cancel.json", &AgentCommand::Cancel { execution_id: 42 });
}

#[test]
fn register_event() {
    let event = AgentEvent::Register(AgentRegistration {
        agent_id: "a-1".into(),
        protocol_version: 1,
        agent_version: "0.1.0".into(),
        agent_sha256: "ab12".into(),
        mode: "oneshot".into(),
        image: Some("busybox:1.36".into()),
        runtimes: vec![DetectedRuntime {
            name: "shell".into(),
            version: Some("1.36.1".into()),
            path: "/bin/sh".into(),
        }],
    });
    assert_golden("register.json", &event);
}

#[test]
fn log_event() {
    let event = AgentEvent::Log {
        agent_id: "a-1".into(),
        execution_id: 42,
        seq: 3,
        stream: OutputStream::Stderr,
        data: "warning\n".into(),
    };
    assert_golden("log.json", &event);
}

/// Output with NUL, terminal escapes and invalid UTF-8 travels as output text: the bytes
/// 0xff 0xfe are U+10FFFF U+10FFFE (`\udbff\udfff\udbff\udffe` in JSON).
#[test]
fn log_event_with_any_bytes() {
    let mut bytes = b"a\0b \x1b[31mred\x1b[0m \xff\xfe ".to_vec();
    bytes.extend_from_slice("😀".as_bytes());
    let event = AgentEvent::Log {
        agent_id: "a-1".into(),
        execution_id: 42,
        seq: 4,
        stream: OutputStream::Stdout,
        data: bytes_to_text(&bytes),
    };
    assert_golden("log_with_any_bytes.json", &event);
    let AgentEvent::Log { data, .. } = event else {
        unreachable!()
    };
    assert_eq!(text_to_bytes(&data), bytes);
    // An older agent's plain text reads as its own UTF-8.
    let AgentEvent::Log { data, .. } = serde_json::from_value(golden("log.json")).unwrap() else {
        panic!("expected a log event")
    };
    assert_eq!(text_to_bytes(&data), b"warning\n");
}

#[test]
fn finished_event() {
    let event = AgentEvent::Finished(JobReport {
        agent_id: "a-1".into(),
        execution_id: 42,
        outcome: JobOutcome::Failed,
        failure_kind: Some(FailureKind::NonZeroExit),
        exit_code: Some(3),
        signal: None,
        stdout: "{\"ok\":false}\n".into(),
        stderr: "boom\n".into(),
        stdout_truncated: false,
        stderr_truncated: false,
        result: Some(json!({"ok": false})),
        error: Some("exited with code 3".into()),
        duration_ms: 12,
    });
    assert_golden("finished.json", &event);
}

#[test]
fn execution_view() {
    let view = ExecutionView {
        id: 7,
        action: "hello.greet".into(),
        status: ExecutionStatus::Succeeded,
        parameters: serde_json::from_value(json!({"name": "Ada", "token": "********"})).unwrap(),
        result: Some(json!({"greeting": "Hello, Ada"})),
        exit_code: Some(0),
        signal: None,
        duration_ms: Some(4),
        stdout: "{\"greeting\": \"Hello, Ada\"}\n".into(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        error: None,
        failure_kind: None,
        retry_of: None,
        image: Some("busybox:1.36".into()),
        container_id: Some("c0ffee".into()),
        agent_id: Some("a-1".into()),
        controller_id: Some("controller-a".into()),
        worker: None,
        waiting_reason: None,
        requested_at: "2026-11-25T15:00:00Z".into(),
        scheduled_at: Some("2026-11-25T15:00:00.010Z".into()),
        started_at: Some("2026-11-25T15:00:00.200Z".into()),
        finished_at: Some("2026-11-25T15:00:00.250Z".into()),
    };
    assert_golden("execution_view.json", &view);
}

/// A newer server may add fields and failure kinds; this agent's types must still parse them.
#[test]
fn unknown_fields_and_variants_are_tolerated() {
    let job: AgentCommand = serde_json::from_value(golden("future/job_with_new_fields.json"))
        .expect("a job with unknown fields parses");
    let AgentCommand::Job(job) = job else {
        panic!("expected a job")
    };
    assert_eq!(job.execution_id, 9);
    assert_eq!(job.kill_grace_seconds, 5, "default grace applies");
    assert_eq!(job.output_limit_bytes, 10485760, "default limit applies");

    let report: AgentEvent =
        serde_json::from_value(golden("future/finished_with_new_kind.json")).unwrap();
    let AgentEvent::Finished(report) = report else {
        panic!("expected a report")
    };
    assert_eq!(report.failure_kind, Some(FailureKind::Other));

    let log: AgentEvent =
        serde_json::from_value(golden("future/log_with_new_fields.json")).unwrap();
    let AgentEvent::Log { data, stream, .. } = log else {
        panic!("expected a log event")
    };
    assert_eq!(stream, OutputStream::Stderr);
    assert_eq!(text_to_bytes(&data), b"warn\0ing\n", "new fields ignored");
}

/// The controller tells a newer agent's event (counted and acked, not applied) from a broken
/// message (dead-lettered, and recorded on its execution when it names one).
#[test]
fn events_decode_as_known_unknown_or_malformed() {
    let known = serde_json::to_vec(&golden("finished.json")).unwrap();
    assert!(matches!(
        AgentEvent::decode(&known),
        IncomingEvent::Known(AgentEvent::Finished(_))
    ));
    let unknown = serde_json::to_vec(&golden("future/unknown_event.json")).unwrap();
    assert_eq!(
        AgentEvent::decode(&unknown),
        IncomingEvent::Unknown {
            event_type: "gpu_usage".into(),
            execution_id: Some(9)
        }
    );
    let IncomingEvent::Malformed {
        event_type,
        execution_id,
        error,
    } = AgentEvent::decode(br#"{"type": "finished", "execution_id": 8, "outcome": 42}"#)
    else {
        panic!("a report with a field of the wrong type is malformed")
    };
    assert_eq!(
        (event_type.as_deref(), execution_id),
        (Some("finished"), Some(8))
    );
    assert!(!error.is_empty());
    for broken in [&b"\x00not json"[..], b"[1, 2]", br#"{"execution_id": 3}"#] {
        assert!(
            matches!(AgentEvent::decode(broken), IncomingEvent::Malformed { .. }),
            "{broken:?}"
        );
    }
    for event in [
        AgentEvent::Heartbeat {
            agent_id: "a".into(),
            running: vec![],
        },
        AgentEvent::Deregister {
            agent_id: "a".into(),
            reason: String::new(),
        },
    ] {
        let value = serde_json::to_value(&event).unwrap();
        assert!(AgentEvent::TYPES.contains(&value["type"].as_str().unwrap()));
        assert_eq!(value["type"], event.event_type());
    }
}

#[test]
fn runtime_names_and_aliases() {
    for runtime in Runtime::ALL {
        assert_eq!(runtime.as_str().parse::<Runtime>().unwrap(), runtime);
    }
    assert_eq!(" Bash ".parse::<Runtime>().unwrap(), Runtime::Shell);
    assert_eq!("nodejs".parse::<Runtime>().unwrap(), Runtime::Node);
    assert_eq!("python-script".parse::<Runtime>().unwrap(), Runtime::Python);
    let error = "cobol".parse::<Runtime>().unwrap_err();
    assert!(error.to_string().contains("unknown runtime \"cobol\""));
}

#[test]
fn transitions_follow_the_state_machine() {
    use ExecutionStatus::*;
    assert!(Requested.can_become(Scheduled));
    assert!(Scheduled.can_become(Running));
    assert!(Running.can_become(Succeeded));
    assert!(!Requested.can_become(Running));
    assert!(!Succeeded.can_become(Failed));
    assert!(!Running.can_become(Requested));
    for status in ExecutionStatus::ALL {
        assert_eq!(status.is_terminal(), status.allowed_next().is_empty());
    }
    assert_eq!(ExecutionStatus::allowed_previous(Running), vec![Scheduled]);
}

#[test]
fn every_failure_kind_has_one_stored_name_and_older_agents_names_still_parse() {
    use attune_protocol::FailureKind;
    let all = [
        FailureKind::NonZeroExit,
        FailureKind::InterpreterMissing,
        FailureKind::EntryPointMissing,
        FailureKind::ParameterDelivery,
        FailureKind::Spawn,
        FailureKind::UnsupportedProtocol,
        FailureKind::PullFailed,
        FailureKind::ExecFormat,
        FailureKind::InjectionFailed,
        FailureKind::Oom,
        FailureKind::Killed,
        FailureKind::AgentExited,
        FailureKind::LeaseExpired,
        FailureKind::Timeout,
        FailureKind::Canceled,
        FailureKind::NotAllowed,
        FailureKind::InvalidAction,
        FailureKind::NoImage,
        FailureKind::ActionMissing,
        FailureKind::PoolExhausted,
        FailureKind::DockerError,
        FailureKind::DockerUnavailable,
        FailureKind::MessageQueue,
        FailureKind::Database,
        FailureKind::ControllerRestarted,
        FailureKind::ControllerLost,
        FailureKind::ControllerShutdown,
        FailureKind::ReportRejected,
        FailureKind::PackFiles,
        FailureKind::NoWorker,
        FailureKind::WorkerLost,
    ];
    for kind in all {
        assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.as_str()));
        assert_eq!(FailureKind::from_name(kind.as_str()), kind);
    }
    for (older, kind) in [
        ("non_zero_exit", FailureKind::NonZeroExit),
        ("interpreter_missing", FailureKind::InterpreterMissing),
        ("entry_point_missing", FailureKind::EntryPointMissing),
        ("parameter_delivery", FailureKind::ParameterDelivery),
        ("unsupported_protocol", FailureKind::UnsupportedProtocol),
    ] {
        assert_eq!(FailureKind::from_name(older), kind, "{older}");
    }
    assert_eq!(
        FailureKind::from_name("gpu-unavailable"),
        FailureKind::Other
    );
}

#[test]
fn created_token_and_roles() {
    use attune_protocol::api::{CreatedToken, Role, TokenView};
    assert_golden(
        "created_token.json",
        &CreatedToken {
            token: "attune_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            view: TokenView {
                id: 3,
                name: "ci".into(),
                role: Role::Executor,
                created_at: "2026-12-01T23:00:00Z".into(),
                revoked_at: None,
            },
        },
    );
    for role in Role::ALL {
        assert_eq!(serde_json::to_value(role).unwrap(), json!(role.as_str()));
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
    }
    assert!(Role::Admin.allows(Role::Editor) && Role::Editor.allows(Role::Executor));
    assert!(!Role::Viewer.allows(Role::Executor) && !Role::Editor.allows(Role::Admin));
    assert!("root"
        .parse::<Role>()
        .unwrap_err()
        .contains("viewer, executor, editor, admin"));
}
