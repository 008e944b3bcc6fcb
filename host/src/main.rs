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
        // Its reader went away (`hotsock status | head`): as for any Unix
        // tool, that is the end of the output, not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, with its chain of causes, as ripgrep does.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `error` comes from writing to a pipe nobody reads any more.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
