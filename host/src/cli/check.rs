//! `hotsock check`: is this file a handler this hotsock can serve?

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use hotsock::runtime::{HANDLER_EXPORT, Handler, Runtime, Settings};
use hotsock::server::THREAD_MAPPINGS;

use crate::cli::args::CacheArgs;

/// Options of `hotsock check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The handler component (.wasm, or .cwasm from `hotsock compile`) to validate.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,

    /// Where compiled handlers are cached.
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Validates the handler as `serve` would, with the default limits, and
/// lists what it imports.
pub fn run(args: &CheckArgs) -> Result<()> {
    let runtime = Runtime::new(Settings {
        cache_dir: args.cache.dir(),
        ..Settings::default()
    })?;
    let handler = Handler::load(&runtime, &args.handler)?;
    println!("ok: `{}` is a hotsock handler", handler.name());
    println!("  exports: {HANDLER_EXPORT}");
    println!("  imports: {}", handler.imports().join(", "));
    println!(
        "  each connection: {} linear memor{}, up to {} memory mappings with its thread",
        handler.memories(),
        if handler.memories() == 1 { "y" } else { "ies" },
        handler.mappings_per_instance() as u64 + THREAD_MAPPINGS
    );
    Ok(())
}
