//! Compiled handler code on disk, so that a second start (or a swap back) with
//! the same component skips compilation: a Python handler takes seconds to
//! compile and milliseconds to load.
//!
//! An entry is named by the component's sha256 and the engine's compatibility
//! hash (wasmtime version, compiler settings, target), so a different build of
//! hotsock or a different configuration never loads stale code; it compiles
//! and writes its own entry instead. Loading an entry maps native code into
//! the process, so the cache directory must belong to this user and be
//! writable by nobody else, or it is not used.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use log::{debug, warn};

use crate::sys;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The environment variable that moves the cache, like `--cache-dir`.
pub const CACHE_DIR_ENV: &str = "HOTSOCK_CACHE_DIR";

/// Most disk the cache keeps; older entries are deleted past it. A Python
/// handler's compiled code is tens of MiB and a Rust one's well under one,
/// so this holds many versions of either.
pub const MAX_CACHE_BYTES: u64 = 1 << 30;

/// The default cache directory: `$XDG_CACHE_HOME/hotsock`, else `~/.cache/hotsock`.
pub fn default_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let home = || {
        std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .map(|h| PathBuf::from(h).join(".cache"))
    };
    xdg.or_else(home).map(|dir| dir.join("hotsock"))
}

/// How often the cache had what was asked of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    /// Components loaded from the cache.
    pub hits: u64,
    /// Components compiled because the cache did not have them.
    pub misses: u64,
}

/// The on-disk cache of compiled components; a no-op when disabled.
pub struct CodeCache {
    dir: Option<PathBuf>,
    /// Loads that found an entry, and that did not (so compiled).
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CodeCache {
    /// A cache in `dir`, or none with `None`. The directory is created
    /// (private to this user) if needed; if it cannot be, or is not safe to
    /// load code from, the cache is off.
    pub fn new(dir: Option<PathBuf>) -> Self {
        let dir = dir.filter(|dir| match prepare(dir) {
            Ok(()) => true,
            Err(why) => {
                warn!("not caching compiled handlers in {}: {why}", dir.display());
                false
            }
        });
        CodeCache {
            dir,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Where entries are kept, if the cache is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The compiled form of the component whose sha256 is `sha256`, if the
    /// cache has it.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let entry = self.entry(engine, sha256)?;
        let found = self.find(engine, &entry);
        let counter = match found {
            Some(_) => &self.hits,
            None => &self.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Loads counted as hits and misses so far; none while the cache is off.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn find(&self, engine: &Engine, entry: &Path) -> Option<Component> {
        if !entry.exists() {
            return None;
        }
        // SAFETY: the entry was written by `Component::serialize` of an
        // engine with the same compatibility hash, into a directory only
        // this user can write (checked in `prepare`); wasmtime still checks
        // its header and compatibility before using it.
        match unsafe { Component::deserialize_file(engine, entry) } {
            Ok(component) => {
                debug!("loaded compiled code from {}", entry.display());
                Some(component)
            }
            Err(e) => {
                warn!("ignoring unusable cache entry {}: {e}", entry.display());
                None
            }
        }
    }

    /// Keeps the compiled form of a component for next time. Called only for
    /// components that passed validation, so rejected files take no space.
    pub fn store(&self, component: &Component, sha256: &str) {
        let (Some(dir), Some(entry)) = (&self.dir, self.entry(component.engine(), sha256)) else {
            return;
        };
        match component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|code| write(dir, &entry, &code))
        {
            Ok(()) => debug!("cached compiled code in {}", entry.display()),
            Err(why) => warn!("cannot cache compiled code in {}: {why}", dir.display()),
        }
    }

    /// The entry for the component whose sha256 is `sha256` compiled by
    /// `engine`: named by both, with the engine's compatibility hash.
    fn entry(&self, engine: &Engine, sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish())))
    }
}

/// Creates the directory, private to this user, and checks that nobody else
/// can write to it: its entries are loaded as native code.
fn prepare(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| e.to_string())?;
    let meta = fs::metadata(dir).map_err(|e| e.to_string())?;
    let me = sys::effective_uid();
    if meta.uid() != me {
        return Err(format!(
            "it belongs to user {}, not to this user ({me})",
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err("others can write to it; `chmod go-w` it".into());
    }
    Ok(())
}

/// Writes an entry atomically (a reader never sees half of one), then trims
/// the cache to [`MAX_CACHE_BYTES`].
fn write(dir: &Path, entry: &Path, code: &[u8]) -> Result<(), String> {
    let partial = entry.with_extension(format!("partial-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&partial)?;
        file.write_all(code)?;
        file.sync_all()?;
        fs::rename(&partial, entry)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&partial);
        e.to_string()
    })?;
    trim(dir, entry);
    Ok(())
}

/// Deletes the least recently written entries until the cache fits its
/// budget; `keep` (the entry just written) always stays.
fn trim(dir: &Path, keep: &Path) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = listing
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    entries.sort();
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    for (_, len, path) in entries {
        if total <= MAX_CACHE_BYTES {
            break;
        }
        if path != keep && fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}
