//! The command line: the subcommands, each in a file of its own with its
//! options and the code that turns them into the library's settings; the
//! options they share are in `args`.

mod admin;
mod args;
mod check;
mod client;
mod compile;
mod config;
mod dev;
mod keyvalue;
mod logging;
mod new;
mod options;
mod serve;
mod signals;
mod test;

use anyhow::Result;
use clap::{ArgMatches, Parser, Subcommand};

/// hotsock: a thread-per-connection TCP server whose per-client logic is a
/// sandboxed, hot-swappable WebAssembly component.
#[derive(Debug, Parser)]
#[command(name = "hotsock", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `hotsock`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve TCP clients: one thread and one fresh handler instance per connection.
    Serve(Box<serve::ServeArgs>),
    /// Check that a file is a handler component this hotsock can serve, without serving it.
    Check(check::CheckArgs),
    /// Swap a new handler component into a running server (needs `serve --admin`).
    Swap(admin::SwapArgs),
    /// Print a running server's handler versions and their connections (needs `serve --admin`).
    Status(admin::StatusArgs),
    /// Return a running server to its previous handler version (needs `serve --admin`).
    Rollback(admin::AdminArgs),
    /// Read and mend key-value buckets in a server's store: list, get, set, delete, increment.
    Keyvalue(keyvalue::KeyValueArgs),
    /// Precompile a handler to native code (.cwasm), which `serve` and `swap` load without compiling.
    Compile(compile::CompileArgs),
    /// Talk to a line-based server: send each line typed (or piped in), print whatever the server sends.
    Client(client::ClientArgs),
    /// Create a new handler project that builds to a component with one command.
    New(new::NewArgs),
    /// Replay recorded or hand-written transcripts against a handler, in process, and compare its replies.
    Test(test::TestArgs),
    /// Build a handler project, serve it on loopback, and rebuild and swap it in on every save.
    Dev(dev::DevArgs),
    /// Run a WASI command component, such as the unit tests `cargo test` builds for wasm32-wasip2.
    Run(test::RunArgs),
}

/// Runs a subcommand to the end; `matches` are the whole command line's.
pub fn run(command: Command, matches: &ArgMatches) -> Result<()> {
    // `serve` starts its log once it knows the format asked for.
    if !matches!(command, Command::Serve(_)) {
        logging::init(logging::LogFormat::Text);
    }
    match command {
        Command::Serve(args) => {
            let serve = matches.subcommand_matches("serve").unwrap_or(matches);
            serve::run(*args, serve)
        }
        Command::Check(args) => check::run(&args),
        Command::Swap(args) => admin::swap(&args),
        Command::Status(args) => admin::status(&args),
        Command::Rollback(args) => admin::rollback(&args),
        Command::Compile(args) => compile::run(&args),
        Command::Keyvalue(args) => keyvalue::run(&args),
        Command::Client(args) => client::run(&args),
        Command::New(args) => new::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Dev(args) => dev::run(args),
        Command::Run(args) => test::run_program(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
