//! The commands of `attune`, each writing to a [`Terminal`] and returning an exit code.

mod action;
mod execution;
mod pack;
mod pool;
mod run;
mod runtime;
mod token;
mod worker;

use crate::cli::{
    ActionCommand, Cli, Command, ContainerCommand, ExecutionCommand, PackCommand, PoolCommand,
    RuntimeCommand, TokenCommand, WorkerCommand,
};
use crate::client::{error_message, ApiClient, ClientError};
use crate::output::Terminal;
use attune_protocol::api::LogChunkView;
use attune_protocol::OutputStream;
use std::io::Write;
use std::time::Duration;

/// Exit code of a successful command.
pub const EXIT_SUCCESS: u8 = 0;
/// Exit code of a failed command, or of an execution that did not succeed.
pub const EXIT_FAILURE: u8 = 1;

/// What every command needs.
pub(crate) struct Context<'a> {
    pub client: ApiClient,
    pub terminal: &'a mut Terminal,
    pub poll_interval: Duration,
}

/// Runs one parsed command line and returns the process exit code; errors are printed to the
/// terminal's stderr as `error: <message>`.
pub async fn run(cli: Cli, terminal: &mut Terminal) -> u8 {
    let code = match dispatch(cli, terminal).await {
        Ok(code) => code,
        Err(error) if is_broken_pipe(&error) => EXIT_SUCCESS,
        Err(error) => {
            // Nothing more can be done if stderr itself is gone.
            let _ = writeln!(terminal.stderr, "error: {}", error_text(&error));
            EXIT_FAILURE
        }
    };
    let _ = terminal.flush();
    code
}

/// An error as `{error:#}` writes it (each cause after a `: `), with a failed call to the
/// server worded as the CLI words it ([`crate::client::error_message`]).
fn error_text(error: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in error.chain() {
        match cause.downcast_ref::<ClientError>() {
            // Its message already holds what its causes say.
            Some(client_error) => {
                parts.push(error_message(client_error));
                break;
            }
            None => parts.push(cause.to_string()),
        }
    }
    parts.join(": ")
}

/// Output piped into a command that stopped reading (`attune execution list | head`).
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io_error| io_error.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn dispatch(cli: Cli, terminal: &mut Terminal) -> anyhow::Result<u8> {
    // A bad saved token must not stop `attune login` from replacing it.
    let token = match (
        &cli.command,
        crate::credentials::resolve_token(cli.token.as_deref()),
    ) {
        (Command::Login { .. }, _) => None,
        (_, token) => token?,
    };
    let client = match &token {
        Some(token) => ApiClient::with_token(&cli.api_url, token)?,
        None => ApiClient::new(&cli.api_url)?,
    };
    let mut context = Context {
        client,
        terminal,
        poll_interval: Duration::from_millis(cli.poll_interval_ms.max(1)),
    };
    match cli.command {
        Command::Pack(PackCommand::Register { dir, force }) => {
            pack::register(&mut context, &dir, force).await
        }
        Command::Pack(PackCommand::List { json }) => pack::list(&mut context, json).await,
        Command::Action(ActionCommand::List { json }) => action::list(&mut context, json).await,
        Command::Action(ActionCommand::Get { action_ref, json }) => {
            action::get(&mut context, &action_ref, json).await
        }
        Command::Run(arguments) => run::run(&mut context, arguments).await,
        Command::Execution(ExecutionCommand::Get { id, json }) => {
            execution::get(&mut context, id, json).await
        }
        Command::Execution(ExecutionCommand::List {
            status,
            action,
            limit,
            json,
        }) => {
            let filter = crate::client::ExecutionFilter {
                status,
                action,
                limit,
            };
            execution::list(&mut context, &filter, json).await
        }
        Command::Execution(ExecutionCommand::Logs { id, follow }) => {
            execution::logs(&mut context, id, follow).await
        }
        Command::Execution(ExecutionCommand::Cancel { id }) => {
            execution::cancel(&mut context, id).await
        }
        Command::Pool(PoolCommand::List { json }) => pool::list_pools(&mut context, json).await,
        Command::Container(ContainerCommand::List { json }) => {
            pool::list_containers(&mut context, json).await
        }
        Command::Worker(WorkerCommand::List { json }) => worker::list(&mut context, json).await,
        Command::Worker(WorkerCommand::Get { name, json }) => {
            worker::get(&mut context, &name, json).await
        }
        Command::Runtime(RuntimeCommand::List { json }) => runtime::list(&mut context, json).await,
        Command::Token(TokenCommand::Create { name, role, json }) => {
            token::create(&mut context, &name, role, json).await
        }
        Command::Token(TokenCommand::List { json }) => token::list(&mut context, json).await,
        Command::Token(TokenCommand::Revoke { id }) => token::revoke(&mut context, id).await,
        Command::Login { token_file } => {
            token::login(&cli.api_url, token_file.as_deref(), &mut context).await
        }
    }
}

/// Writes a value as pretty JSON followed by a newline.
pub(crate) fn write_json(
    output: &mut dyn Write,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *output, value)?;
    writeln!(output)?;
    Ok(())
}

/// Writes a log chunk to stdout or stderr, as its stream says.
pub(crate) fn write_chunk(terminal: &mut Terminal, chunk: &LogChunkView) -> std::io::Result<()> {
    let output = match chunk.stream {
        OutputStream::Stdout => &mut terminal.stdout,
        OutputStream::Stderr => &mut terminal.stderr,
    };
    output.write_all(chunk.data.as_bytes())?;
    output.flush()
}

/// Writes text and a newline unless it already ends with one.
pub(crate) fn write_text(output: &mut dyn Write, text: &str) -> std::io::Result<()> {
    output.write_all(text.as_bytes())?;
    if !text.is_empty() && !text.ends_with('\n') {
        output.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn client_errors_are_worded_as_the_cli_words_them() {
        let conflict = || {
            ClientError::from_response(
                "POST",
                "http://127.0.0.1:8080/api/v1/packs",
                409,
                br#"{"error":"conflict","detail":"pack hello already exists"}"#,
            )
        };
        assert_eq!(
            error_text(&anyhow::Error::from(conflict())),
            "pack hello already exists"
        );
        let wrapped = Err::<(), _>(conflict())
            .context("register pack hello")
            .expect_err("an error");
        assert_eq!(
            error_text(&wrapped),
            "register pack hello: pack hello already exists"
        );
        let plain = Err::<(), _>(std::io::Error::other("disk full"))
            .context("write output")
            .expect_err("an error");
        assert_eq!(error_text(&plain), format!("{plain:#}"));
    }
}
