//! What the `attune-agent` binary does with its command line: version, help, detection, or the
//! agent itself on a single-threaded runtime.

use crate::config::{parse_invocation, Invocation, USAGE};
use crate::detect::{format_detected, parse_runtime_list, Detector, SearchPath};
use crate::{agent, hints, mq, secrets};
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
        Invocation::DetectOnly { .. } => {}
    }

    let runtime_hints = match hints::load_default_hints() {
        Ok(runtime_hints) => runtime_hints,
        Err(error) => {
            eprintln!("attune-agent: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let selection = match std::env::var(queues::ENV_WORKER_RUNTIMES) {
        Ok(value) => match parse_runtime_list(&value, &runtime_hints) {
            Ok(selection) => selection,
            Err(error) => {
                eprintln!("attune-agent: {error}");
                return ExitCode::from(USAGE_ERROR);
            }
        },
        Err(_) => None,
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
        Invocation::Version | Invocation::Help => ExitCode::SUCCESS,
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
