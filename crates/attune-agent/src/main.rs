//! `attune-agent`: the static in-container agent; everything lives in the library.

fn main() -> std::process::ExitCode {
    attune_agent::entry::main_with_arguments(std::env::args().skip(1))
}
