//! `attune-server`: reads settings and roles, starts logging, runs until SIGTERM or Ctrl-C,
//! drains.

use anyhow::Context;
use attune_server::config::{Settings, SettingsOverrides};
use clap::Parser;
use std::path::PathBuf;

/// The Attune server: API, scheduler and container controller.
#[derive(Debug, Parser)]
#[command(name = "attune-server", version)]
struct Arguments {
    /// Settings file (TOML or YAML); environment ATTUNE__SECTION__KEY overrides it.
    #[arg(long, env = "ATTUNE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (server.bind).
    #[arg(long)]
    bind: Option<String>,
    /// Postgres URL (database.url).
    #[arg(long)]
    database_url: Option<String>,
    /// AMQP URL (message_queue.url).
    #[arg(long)]
    message_queue_url: Option<String>,
    /// `text` or `json` (log.format).
    #[arg(long)]
    log_format: Option<String>,
    /// The static agent binary to inject (docker.agent_binary).
    #[arg(long)]
    agent_binary: Option<PathBuf>,
    /// Roles of this process: `api`, `controller` (`scheduler` is part of it), comma-separated.
    #[arg(long, env = "ATTUNE_ROLES", default_value = "api,controller")]
    roles: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let overrides = SettingsOverrides {
        bind: arguments.bind,
        database_url: arguments.database_url,
        message_queue_url: arguments.message_queue_url,
        log_format: arguments.log_format,
        agent_binary: arguments.agent_binary,
    };
    let roles = attune_server::app::Roles::parse(&arguments.roles)
        .map_err(|reason| anyhow::anyhow!("invalid --roles: {reason}"))?;
    let settings = Settings::load(arguments.config.as_deref(), &overrides)?;
    attune_server::telemetry::init(
        &settings.log.level,
        settings.log.format == "json",
        std::io::stderr,
    );
    let listener = if roles.api {
        Some(
            tokio::net::TcpListener::bind(&settings.server.bind)
                .await
                .with_context(|| format!("listen on {}", settings.server.bind))?,
        )
    } else {
        None
    };
    attune_server::app::run_roles(settings, roles, listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
