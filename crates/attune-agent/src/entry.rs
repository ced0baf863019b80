//! What the `attune-agent` binary does with its command line: version, help, detection, or the
//! agent itself (a controller's, or a long-lived worker that enrolls) on a single-threaded
//! runtime.

use crate::config::{parse_invocation, Invocation, USAGE};
use crate::detect::{
    format_detected, parse_runtime_list, parse_runtime_names, Detector, RuntimeName, SearchPath,
};
use crate::hints::RuntimeHints;
use crate::worker_config::RuntimeChoice;
use crate::{agent, hints, mq, secrets, worker};
use attune_protocol::{queues, PROTOCOL_VERSION};
use std::process::ExitCode;

/// Exit code for a command line or environment that cannot be used.
const USAGE_ERROR: u8 = 2;

/// Runs the binary with these arguments (without the program name) and the process environment.
pub fn main_with_arguments(arguments: impl IntoIterator<Item = String>) -> ExitCode {
    let mut invocation = match parse_invocation(arguments, |name| std::env::var(name).ok()) {
        Ok(invocation) => invocation,
        Err(error) => {
            eprintln!("attune-agent: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    match invocation {
        Invocation::Version => {
            println!(
                "attune-agent {} (protocol {PROTOCOL_VERSION})",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Invocation::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Invocation::Run(ref mut config) => {
            // Whatever the agent runs later must not be able to read its memory.
            if let Err(error) = secrets::become_undumpable() {
                eprintln!("attune-agent: make the agent non-dumpable: {error}");
                return ExitCode::FAILURE;
            }
            if config.secrets_on_stdin {
                match secrets::read_from_stdin() {
                    Ok(received) => {
                        config.message_queue_url = received.mq_url;
                        config.message_queue_ca_pem = received.mq_ca_pem;
                        config.event_key = Some(received.event_key);
                    }
                    Err(error) => {
                        eprintln!("attune-agent: {error}");
                        return ExitCode::from(USAGE_ERROR);
                    }
                }
            }
            if let Err(error) = mq::agent_uri(&config.message_queue_url) {
                eprintln!("attune-agent: {error}");
                return ExitCode::from(USAGE_ERROR);
            }
        }
        Invocation::Worker(_) => {
            // The token is in this process's memory from now on: out of the actions' reach.
            if let Err(error) = secrets::become_undumpable() {
                eprintln!("attune-agent: make the agent non-dumpable: {error}");
                return ExitCode::FAILURE;
            }
        }
        Invocation::DetectOnly { .. } => {}
    }

    let runtime_hints = match hints::load_default_hints() {
        Ok(runtime_hints) => runtime_hints,
        Err(error) => {
            eprintln!("attune-agent: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let environment_runtimes = std::env::var(queues::ENV_WORKER_RUNTIMES).ok();
    let choice = match &invocation {
        Invocation::Worker(worker) => worker.worker.runtimes.clone(),
        _ => match environment_runtimes {
            Some(value) => RuntimeChoice::Environment(value),
            None => RuntimeChoice::Detect,
        },
    };
    let selection = match runtime_selection(&choice, &runtime_hints) {
        Ok(selection) => selection,
        Err(error) => {
            eprintln!("attune-agent: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let detector = Detector::new(SearchPath::from_environment(), runtime_hints);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("attune-agent: start async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };

    match invocation {
        Invocation::DetectOnly { json } => runtime.block_on(async {
            let detected = detector.detect(selection.as_deref(), true).await;
            if json {
                match serde_json::to_string_pretty(&detected) {
                    Ok(text) => println!("{text}"),
                    Err(error) => {
                        eprintln!("attune-agent: encode detected runtimes: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", format_detected(&detected));
            }
            ExitCode::SUCCESS
        }),
        Invocation::Run(config) => runtime.block_on(async {
            let shutdown = match termination_signal() {
                Ok(shutdown) => shutdown,
                Err(error) => {
                    eprintln!("attune-agent: install signal handlers: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match agent::run(*config, detector, selection, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("attune-agent: {error}");
                    ExitCode::FAILURE
                }
            }
        }),
        Invocation::Worker(invocation) => runtime.block_on(async {
            let shutdown = match termination_signal() {
                Ok(shutdown) => shutdown,
                Err(error) => {
                    eprintln!("attune-agent: install signal handlers: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match worker::run(*invocation, detector, selection, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("attune-agent: {error}");
                    if error.is_final() {
                        ExitCode::from(USAGE_ERROR)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }),
        Invocation::Version | Invocation::Help => ExitCode::SUCCESS,
    }
}

/// The runtimes to detect, by tier: `ATTUNE_WORKER_RUNTIMES`, else a worker's
/// `worker.runtimes`, else all (`None`; `native` only ever when named).
fn runtime_selection(
    choice: &RuntimeChoice,
    runtime_hints: &RuntimeHints,
) -> Result<Option<Vec<RuntimeName>>, crate::detect::DetectError> {
    match choice {
        RuntimeChoice::Environment(value) => parse_runtime_list(value, runtime_hints),
        RuntimeChoice::ConfigFile { path, names } => parse_runtime_names(
            names.iter().map(String::as_str),
            runtime_hints,
            &format!("worker.runtimes in {}", path.display()),
        ),
        RuntimeChoice::Detect => Ok(None),
    }
}

/// Resolves to `received SIGTERM` or `received SIGINT` on the first of them (handlers are
/// installed before it is returned).
fn termination_signal() -> std::io::Result<impl std::future::Future<Output = String>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let signal_name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        format!("received {signal_name}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_protocol::Runtime;
    use std::path::PathBuf;

    #[tokio::test]
    async fn runtimes_come_from_the_environment_then_the_file_then_detection() {
        let hints = RuntimeHints::default();
        let from_environment =
            runtime_selection(&RuntimeChoice::Environment("shell, native".into()), &hints).unwrap();
        assert_eq!(
            from_environment,
            Some(vec![
                RuntimeName::Builtin(Runtime::Shell),
                RuntimeName::Builtin(Runtime::Native)
            ])
        );
        let from_file = RuntimeChoice::ConfigFile {
            path: PathBuf::from("/c.yaml"),
            names: vec!["native".into()],
        };
        assert_eq!(
            runtime_selection(&from_file, &hints).unwrap(),
            Some(vec![RuntimeName::Builtin(Runtime::Native)])
        );
        let bad_file = RuntimeChoice::ConfigFile {
            path: PathBuf::from("/c.yaml"),
            names: vec!["cobol".into()],
        };
        let error = runtime_selection(&bad_file, &hints)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("worker.runtimes in /c.yaml names unknown runtime"),
            "{error}"
        );
        assert_eq!(
            runtime_selection(&RuntimeChoice::Detect, &hints).unwrap(),
            None
        );

        // `native` is reported when declared, never detected.
        let detector = Detector::new(SearchPath::from_environment(), hints.clone());
        let detected = detector.detect(None, false).await;
        assert!(detected.iter().all(|runtime| runtime.name != "native"));
        assert!(detected.iter().any(|runtime| runtime.name == "shell"));
        let declared = runtime_selection(&from_file, &hints).unwrap();
        let detected = detector.detect(declared.as_deref(), false).await;
        assert_eq!(detected.len(), 1);
        assert_eq!(detected[0].name, "native");
    }
}
