//! Entry point of the `attune` binary: parse arguments, run the command, exit with its code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = attune_cli::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut terminal = attune_cli::output::Terminal::stdio();
    ExitCode::from(runtime.block_on(attune_cli::run(cli, &mut terminal)))
}
