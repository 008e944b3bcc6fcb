//! The `hotsock` binary: parses the command line and runs a subcommand.
//! The command line lives in `cli/`, one file per subcommand; the work lives
//! in the library, whose crate documentation has the map.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

fn main() -> ExitCode {
    // The matches too: `serve` tells options given from defaults left alone.
    let matches = cli::Cli::command().get_matches();
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli::run(cli.command, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, with its chain of causes, as ripgrep does.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
