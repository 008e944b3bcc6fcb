//! `hotsock check`: is this file a handler this hotsock can serve? Or, with
//! `--config`: is this whole config servable here?

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use hotsock::runtime::{HANDLER_EXPORT, Handler, KeyValueStore, Profile, Runtime, RuntimeConfig};
use hotsock::server::{Capacity, THREAD_MAPPINGS};

use crate::cli::args::CacheArgs;
use crate::cli::config::{Plan, check_addresses};
use crate::cli::options::ServeOptions;

/// Options of `hotsock check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The handler component (.wasm, or .cwasm from `hotsock compile`) to validate.
    #[arg(
        value_name = "HANDLER",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub handler: Option<PathBuf>,

    /// Validate a config file instead, as `serve --config` would read it:
    /// its syntax, every address, every listener's handler under that
    /// listener's limits, and what it needs of this machine. Nothing binds.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where compiled handlers are cached.
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Validates the handler as `serve` would, with the default limits, and
/// lists what it imports; or validates a config.
pub fn run(args: &CheckArgs) -> Result<()> {
    let Some(handler) = &args.handler else {
        let config = args.config.as_deref().context("nothing to check")?;
        return check_config(args, config);
    };
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: args.cache.dir(),
        ..RuntimeConfig::default()
    })?;
    let handler = Handler::load(&runtime, &Profile::default(), handler)?;
    println!("ok: `{}` is a hotsock handler", handler.name());
    let current = match handler.export() {
        HANDLER_EXPORT => "",
        _ => ", an earlier contract: still served",
    };
    println!(
        "  contract: hotsock:plugin {}{current} (exports {})",
        handler.contract(),
        handler.export()
    );
    println!("  imports: {}", handler.imports().join(", "));
    for grant in grants_needed(handler.imports()) {
        println!("  may need: {grant}");
    }
    println!(
        "  each connection: {} linear memor{} (initial data {}), up to {} memory mappings with \
         its thread",
        handler.memories(),
        if handler.memories() == 1 { "y" } else { "ies" },
        handler.footprint().describe(),
        handler.mappings_per_instance() as u64 + THREAD_MAPPINGS
    );
    Ok(())
}

/// The grants a handler that imports `imports` may need to do its work:
/// without them the imports link, and every use is denied.
fn grants_needed(imports: &[String]) -> Vec<&'static str> {
    let imports_any = |prefixes: &[&str]| {
        imports
            .iter()
            .any(|import| prefixes.iter().any(|p| import.starts_with(p)))
    };
    let mut needed = Vec::new();
    if imports_any(&["wasi:sockets/tcp@", "wasi:sockets/tcp-create-socket@"]) {
        needed.push(
            "--allow-connect HOST:PORT, for its TCP connections out (it imports wasi:sockets/tcp)",
        );
    }
    if imports_any(&["wasi:keyvalue/store@"]) {
        needed.push("--keyvalue NAME, for each bucket it opens (it imports wasi:keyvalue/store)");
    }
    if imports_any(&["wasi:filesystem/preopens@"]) {
        needed.push("--dir or --dir-rw, for files (it imports wasi:filesystem)");
    }
    needed
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_secs() as i64)
}

fn check_config(args: &CheckArgs, config: &std::path::Path) -> Result<()> {
    let plan = Plan::new(Some(config), &ServeOptions::default(), args.cache.dir())?;
    let served = &plan.config;
    check_addresses(served)?;
    let capacity = Capacity::check(served.total_connections())?;
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: served.total_connections(),
        max_memory: served.max_memory(),
        cache_dir: args.cache.dir(),
        keyvalue_max_bytes: served.keyvalue_max_bytes,
        // Checking opens no store: it would create the state it checks for.
        keyvalue_store: KeyValueStore::Memory,
    })?;
    for listener in &served.listeners {
        let name = &listener.name;
        let settings = &listener.settings;
        runtime
            .admits(&settings.profile)
            .with_context(|| format!("listener {name}"))?;
        let handler = Handler::load(&runtime, &settings.profile, &listener.handler)
            .with_context(|| format!("listener {name}"))?;
        capacity
            .reserve(name, settings.rules.max_connections, &handler)
            .map_err(|why| anyhow::anyhow!("listener {name}: {why}"))?;
        println!(
            "ok: listener {name} on {}: `{}` is a hotsock handler",
            listener.addrs.join(", "),
            handler.name()
        );
        // Certificates are read and checked as a start would: key against
        // certificate, dates, the client CA.
        let loaded = listener
            .load_settings()
            .with_context(|| format!("listener {name}"))?;
        if let Some(tls) = &loaded.tls {
            let first = tls.expiries().iter().map(|(_, at)| *at).min();
            println!(
                "ok: listener {name}: TLS, {} certificate(s){}",
                tls.expiries().len(),
                first.map_or_else(String::new, |at| format!(
                    ", the first to expire in {} days",
                    (at - now()) / 86_400
                ))
            );
        }
    }
    println!("ok: key-value store {}", served.keyvalue_store);
    println!("ok: rooms store {}", served.rooms_store);
    println!(
        "ok: {} is a config this hotsock can serve",
        config.display()
    );
    Ok(())
}
