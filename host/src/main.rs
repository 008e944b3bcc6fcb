//! The `hotsock` binary: parses the command line and runs a subcommand.
//! The command line lives in `cli/`, one file per subcommand; the work lives
//! in the library, whose crate documentation has the map.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .format_timestamp_millis()
        .init();
    match cli::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, with its chain of causes, as ripgrep does.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
