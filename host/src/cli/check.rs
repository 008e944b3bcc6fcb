//! `hotsock check`: is this file a handler this hotsock can serve?

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use hotsock::runtime::{HANDLER_EXPORT, Handler, Runtime, Settings};

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
    Ok(())
}
