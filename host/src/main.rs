//! The `hotsock` binary: parses the command line and runs a subcommand. The
//! work lives in the library; see its crate documentation for the map.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use log::{info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use hotsock::config::{CheckArgs, Cli, Command, ServeArgs};
use hotsock::handler::{HANDLER_EXPORT, Handler};
use hotsock::sandbox::Sandbox;
use hotsock::server::{self, Server, Settings, Stopper};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let sandbox = Arc::new(Sandbox::new()?);
    // Validate the handler before binding, so a bad file fails fast and a
    // script never sees `listening on` for a server that cannot serve.
    let handler = Arc::new(Handler::load(&sandbox, &args.handler)?);
    let listeners = server::bind(&args.addrs)?;
    let settings = Settings {
        drain_timeout: args.drain_timeout,
    };
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let server = Server::new(sandbox, Arc::clone(&handler), listeners, settings)?;
    stop_on_signals(server.stopper())?;

    info!("serving handler `{}`", handler.name());
    let mut stdout = std::io::stdout().lock();
    for addr in addrs {
        writeln!(stdout, "listening on {addr}")?;
    }
    // Scripts wait for these lines before connecting; do not leave them in a buffer.
    stdout.flush()?;
    drop(stdout);
    server.run()
}

fn check(args: CheckArgs) -> Result<()> {
    let sandbox = Sandbox::new()?;
    let handler = Handler::load(&sandbox, &args.handler)?;
    println!("ok: `{}` is a hotsock handler", handler.name());
    println!("  exports: {HANDLER_EXPORT}");
    println!("  imports: {}", handler.imports().join(", "));
    Ok(())
}

/// The first SIGINT or SIGTERM drains the server; a second one exits at once,
/// for an operator who does not want to wait.
fn stop_on_signals(stopper: Stopper) -> Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signals = signals.forever();
            if let Some(signal) = signals.next() {
                info!("received {}: shutting down", signal_name(signal));
                stopper.stop();
            }
            if let Some(signal) = signals.next() {
                warn!(
                    "received {} again: exiting without waiting for open connections",
                    signal_name(signal)
                );
                std::process::exit(128 + signal);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
