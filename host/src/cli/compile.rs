//! `hotsock compile`: a handler's native code, written to a `.cwasm` file.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use hotsock::runtime::{Handler, Profile, Runtime, RuntimeConfig};

use crate::cli::args::CacheArgs;

/// Options of `hotsock compile`.
#[derive(Debug, Args)]
#[command(after_help = "\
A .cwasm file is native code for this hotsock version and its default engine settings; \
load only .cwasm files you compiled yourself.")]
pub struct CompileArgs {
    /// The handler component (.wasm) to compile. It is fully validated first.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,

    /// Where to write the compiled handler [default: HANDLER with the extension .cwasm].
    #[arg(short, long, value_name = "FILE.cwasm")]
    pub output: Option<PathBuf>,

    /// Where compiled handlers are cached.
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Validates and compiles the handler, and writes its native code.
pub fn run(args: &CompileArgs) -> Result<()> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| args.handler.with_extension("cwasm"));
    // The default settings, so that `serve` with defaults can load it.
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: args.cache.dir(),
        ..RuntimeConfig::default()
    })?;
    let handler = Handler::load(&runtime, &Profile::default(), &args.handler)?;
    std::fs::write(&output, handler.precompiled()?)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "compiled {} to {}",
        args.handler.display(),
        output.display()
    );
    Ok(())
}
