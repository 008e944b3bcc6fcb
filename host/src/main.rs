//! The `hotsock` binary: parses the command line and runs a subcommand. The
//! work lives in the library; see its crate documentation for the map.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use hotsock::admin::{self, Client};
use hotsock::client;
use hotsock::config::{
    AdminArgs, CheckArgs, Cli, Command, CompileArgs, NewArgs, ServeArgs, StatusArgs, SwapArgs,
};
use hotsock::handler::{HANDLER_EXPORT, Handler, read_component};
use hotsock::limits::Limits;
use hotsock::registry::{Policy, Registry};
use hotsock::reload::{Reloader, Trigger};
use hotsock::sandbox::{Capabilities, Sandbox};
use hotsock::scaffold;
use hotsock::server::{self, Server, Settings, Stopper};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check(args) => check(args),
        Command::Swap(args) => swap(args),
        Command::Status(args) => status(args),
        Command::Rollback(args) => rollback(args),
        Command::Compile(args) => compile(args),
        Command::Client(args) => client::run(&args),
        Command::New(args) => new(args),
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
    if let Err(e) = server::raise_open_file_limit() {
        warn!("cannot raise the open file limit: {e}");
    }
    let limits = Limits {
        max_memory: args.max_memory,
        cpu_budget: args.cpu_budget,
        idle_timeout: args.idle_timeout,
        max_connection_time: args.max_connection_time,
        max_connections: args.max_connections,
    };
    let capabilities = Capabilities {
        env: args.env.clone(),
        dirs: args.dirs.iter().chain(&args.dirs_rw).cloned().collect(),
    };
    let sandbox = Arc::new(Sandbox::new(limits, capabilities, args.cache.dir())?);
    let policy = Policy {
        rollback_on_traps: args.rollback_on_traps,
        drain_deadline: args.drain_deadline,
    };
    // Validate the handler before binding, so a bad file fails fast and a
    // script never sees `listening on` for a server that cannot serve.
    let bytes = read_component(&args.handler)?;
    let source = args.handler.display().to_string();
    let registry = Arc::new(Registry::new(sandbox, policy, source, &bytes)?);
    let listeners = server::bind(&args.addrs)?;
    let admin = match &args.admin {
        Some(addr) => Some(admin::bind(addr, args.admin_allow_remote)?),
        None => None,
    };

    let reloader = Reloader::spawn(Arc::clone(&registry), args.handler.clone())?;
    // Kept alive for as long as the server runs: dropping it ends the watch.
    let _watcher = match args.watch {
        true => Some(reloader.watch(&args.handler)?),
        false => None,
    };
    let settings = Settings {
        drain_timeout: args.drain_timeout,
        when_full: args.when_full,
    };
    let mut announce = Vec::new();
    for listener in &listeners {
        announce.push(format!("{}{}", server::LISTENING, listener.local_addr()?));
    }
    if let Some(admin) = &admin {
        announce.push(format!("{}{}", server::ADMIN_LISTENING, admin.local_addr()?));
    }
    let server = Server::new(Arc::clone(&registry), listeners, settings)?;
    handle_signals(server.stopper(), reloader)?;
    if let Some(admin) = admin {
        admin::spawn(admin, Arc::clone(&registry), server.admission())?;
    }

    info!(
        "serving handler {} as {}",
        args.handler.display(),
        registry.current().id()
    );
    let mut stdout = std::io::stdout().lock();
    for line in announce {
        writeln!(stdout, "{line}")?;
    }
    // Scripts wait for these lines before connecting; do not leave them in a buffer.
    stdout.flush()?;
    drop(stdout);
    server.run()
}

fn check(args: CheckArgs) -> Result<()> {
    // Checked against the default limits: what `serve` would apply.
    let sandbox = Sandbox::new(Limits::default(), Capabilities::default(), args.cache.dir())?;
    let handler = Handler::load(&sandbox, &args.handler)?;
    println!("ok: `{}` is a hotsock handler", handler.name());
    println!("  exports: {HANDLER_EXPORT}");
    println!("  imports: {}", handler.imports().join(", "));
    Ok(())
}

fn compile(args: CompileArgs) -> Result<()> {
    let output = args
        .output
        .unwrap_or_else(|| args.handler.with_extension("cwasm"));
    // The default limits and settings, so `serve` with defaults can load it.
    let sandbox = Sandbox::new(Limits::default(), Capabilities::default(), args.cache.dir())?;
    let handler = Handler::load(&sandbox, &args.handler)?;
    std::fs::write(&output, handler.precompiled()?)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "compiled {} to {}",
        args.handler.display(),
        output.display()
    );
    Ok(())
}

fn new(args: NewArgs) -> Result<()> {
    let dir = scaffold::create(std::path::Path::new("."), &args.name, args.lang)?;
    println!("created {}; build it with:", dir.display());
    println!(
        "  cd {} && {}",
        dir.display(),
        scaffold::build_command(&args.name, args.lang)
    );
    println!("and see its README.md for serving and swapping it");
    Ok(())
}

fn swap(args: SwapArgs) -> Result<()> {
    let component = read_component(&args.handler)?;
    let source = std::path::absolute(&args.handler)?.display().to_string();
    let answer = Client::new(args.admin.admin)
        .swap(&source, &component)
        .context("swap rejected")?;
    match answer["swapped"].as_bool() {
        Some(true) => println!(
            "swapped: {} -> {}",
            answer["replaced"].as_str().unwrap_or("?"),
            answer["current"].as_str().unwrap_or("?")
        ),
        _ => println!(
            "unchanged: {} is already serving this component",
            answer["current"].as_str().unwrap_or("?")
        ),
    }
    Ok(())
}

fn status(args: StatusArgs) -> Result<()> {
    let status = Client::new(args.admin.admin).status()?;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&status)?),
        false => print!("{}", admin::render_status(&status)),
    }
    Ok(())
}

fn rollback(args: AdminArgs) -> Result<()> {
    let answer = Client::new(args.admin)
        .rollback()
        .context("rollback refused")?;
    println!(
        "rolled back: {} -> {}",
        answer["replaced"].as_str().unwrap_or("?"),
        answer["current"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// SIGHUP reloads the handler. The first SIGINT or SIGTERM drains the server;
/// a second one exits at once, for an operator who does not want to wait.
fn handle_signals(stopper: Stopper, reloader: Reloader) -> Result<()> {
    let mut signals =
        Signals::new([SIGHUP, SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let name = signal_name(signal);
                match signal {
                    SIGHUP => {
                        info!("received SIGHUP: reloading the handler");
                        reloader.request(Trigger::Signal);
                    }
                    _ if !stopping => {
                        info!("received {name}: shutting down");
                        stopper.stop();
                        stopping = true;
                    }
                    _ => {
                        warn!(
                            "received {name} again: exiting without waiting for open connections"
                        );
                        std::process::exit(128 + signal);
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGHUP => "SIGHUP",
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
