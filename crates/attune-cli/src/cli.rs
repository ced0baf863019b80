//! Command-line arguments of `attune` (clap derive).

use crate::parameters::parse_parameter;
use attune_protocol::api::{ExecutionStatus, Role};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use std::path::PathBuf;

/// API base used when neither `--api-url` nor `ATTUNE_API_URL` is set.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8080";

/// Attune: run automation actions in containers made from any image.
#[derive(Debug, Parser)]
#[command(name = "attune", version, about, propagate_version = true)]
pub struct Cli {
    /// Base URL of the Attune server's API.
    #[arg(long, global = true, env = "ATTUNE_API_URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,

    /// The API token (prefer the file `attune login` writes: an environment variable is
    /// visible to this user's other processes).
    #[arg(
        long = "token",
        global = true,
        env = "ATTUNE_API_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    pub token: Option<String>,

    /// How often to poll the server while waiting or following logs, in milliseconds.
    #[arg(long, global = true, hide = true, default_value_t = 500)]
    pub poll_interval_ms: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register and list packs.
    #[command(subcommand)]
    Pack(PackCommand),
    /// List and show actions.
    #[command(subcommand)]
    Action(ActionCommand),
    /// Run an action: `attune run hello.greet name=Ada --wait`.
    Run(RunArgs),
    /// Show, list, follow and cancel executions.
    #[command(subcommand)]
    Execution(ExecutionCommand),
    /// Show warm pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Show the containers the controller manages.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Show long-lived workers: status, runtimes, labels, load.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Show the runtime registry: templates, packs' runtimes, runtimes workers reported.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check an API token and save it (mode 0600) for the next commands.
    Login {
        /// Read the token from this file (e.g. the server's first admin token file);
        /// without it the token is read from stdin.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed this once (the server keeps only its hash).
    Create {
        /// What the token is for (`ci`, `alice`).
        #[arg(long)]
        name: String,
        /// viewer (read), executor (run, cancel), editor (register packs) or admin (tokens).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Print JSON instead of the token alone.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke { id: i64 },
}

fn parse_role(name: &str) -> Result<Role, String> {
    name.parse()
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// List workers: status, runtimes, running/concurrency, last heartbeat.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one worker.
    Get {
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// List runtimes: where each comes from, its interpreters, extension and environment.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List warm pools: ready, busy and starting containers, created and retired counts.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// List managed containers (warm pool members and per-execution containers).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PackCommand {
    /// Validate a pack directory locally, then upload it.
    Register {
        /// The pack directory (with pack.yaml and actions/).
        dir: PathBuf,
        /// Replace the pack if it is already registered.
        #[arg(long)]
        force: bool,
    },
    /// List registered packs.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// List registered actions.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one action and its parameters.
    Get {
        /// The action's ref, `<pack>.<name>`.
        action_ref: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The action's ref, `<pack>.<name>`.
    pub action: String,

    /// Parameters as key=value; values that parse as JSON are JSON (count=3, flags=[1,2]),
    /// anything else is a string (name=Ada).
    #[arg(value_name = "KEY=VALUE", value_parser = parse_parameter)]
    pub parameters: Vec<(String, Value)>,

    /// Wait for the execution to finish, streaming its output; exit 1 unless it succeeds.
    #[arg(long)]
    pub wait: bool,

    /// Print the execution as JSON (the final one with --wait).
    #[arg(long)]
    pub json: bool,

    /// Stop waiting after this many seconds (implies --wait); the execution keeps running.
    #[arg(long, value_name = "N")]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum ExecutionCommand {
    /// Show one execution.
    Get {
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List executions, newest first.
    List {
        /// Only executions with this status.
        #[arg(long, value_parser = parse_status)]
        status: Option<ExecutionStatus>,
        /// Only executions of this action.
        #[arg(long)]
        action: Option<String>,
        /// At most this many executions.
        #[arg(long)]
        limit: Option<u32>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print an execution's output.
    Logs {
        id: i64,
        /// Keep printing new output until the execution finishes.
        #[arg(long, short)]
        follow: bool,
    },
    /// Ask the server to cancel a running execution.
    Cancel { id: i64 },
}

fn parse_status(name: &str) -> Result<ExecutionStatus, String> {
    name.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use serde_json::json;

    fn parse(arguments: &[&str]) -> Cli {
        Cli::try_parse_from(arguments).expect("arguments parse")
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_collects_parameters_and_flags() {
        let cli = parse(&[
            "attune",
            "run",
            "hello.greet",
            "name=Ada",
            "count=3",
            "--wait",
            "--timeout-seconds",
            "30",
        ]);
        let Command::Run(run) = cli.command else {
            panic!("expected run, got {:?}", cli.command);
        };
        assert_eq!(run.action, "hello.greet");
        assert_eq!(
            run.parameters,
            vec![
                ("name".to_string(), json!("Ada")),
                ("count".to_string(), json!(3))
            ]
        );
        assert!(run.wait);
        assert!(!run.json);
        assert_eq!(run.timeout_seconds, Some(30));
    }

    #[test]
    fn malformed_parameters_are_usage_errors() {
        let error = Cli::try_parse_from(["attune", "run", "hello.greet", "oops"])
            .expect_err("parameter without =");
        assert!(
            error.to_string().contains("must be written key=value"),
            "{error}"
        );
    }

    #[test]
    fn api_url_is_global_and_defaults() {
        let cli = parse(&[
            "attune",
            "pack",
            "list",
            "--api-url",
            "http://localhost:9999",
        ]);
        assert_eq!(cli.api_url, "http://localhost:9999");
        assert!(matches!(
            cli.command,
            Command::Pack(PackCommand::List { json: false })
        ));
    }

    #[test]
    fn execution_list_filters_parse() {
        let cli = parse(&[
            "attune",
            "execution",
            "list",
            "--status",
            "failed",
            "--action",
            "hello.greet",
            "--limit",
            "5",
        ]);
        let Command::Execution(ExecutionCommand::List {
            status,
            action,
            limit,
            json,
        }) = cli.command
        else {
            panic!("expected execution list");
        };
        assert_eq!(status, Some(ExecutionStatus::Failed));
        assert_eq!(action.as_deref(), Some("hello.greet"));
        assert_eq!(limit, Some(5));
        assert!(!json);

        let error = Cli::try_parse_from(["attune", "execution", "list", "--status", "done"])
            .expect_err("unknown status");
        assert!(
            error.to_string().contains("unknown execution status"),
            "{error}"
        );
    }

    #[test]
    fn pack_register_takes_a_directory() {
        let cli = parse(&[
            "attune",
            "pack",
            "register",
            "examples/packs/hello",
            "--force",
        ]);
        let Command::Pack(PackCommand::Register { dir, force }) = cli.command else {
            panic!("expected pack register");
        };
        assert_eq!(dir, PathBuf::from("examples/packs/hello"));
        assert!(force);
    }
}
