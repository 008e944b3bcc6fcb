//! Reloading: on SIGHUP, and with `--watch` whenever a listener's handler
//! file or one of its TLS files changes.
//!
//! Every reload goes through one thread, so reloads never overlap and never
//! run on the accept path. What a reload does is the caller's: swap a
//! listener's handler from its file ([`reload_handler`]), or re-read a whole
//! config file.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result};
use log::{info, warn};
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::runtime::read_component;
use crate::server::registry::{Registry, Swapped};
use crate::sys;

/// How long a handler file must stay unchanged before `--watch` reads it.
/// Builds and editors write a file in several steps a few milliseconds apart;
/// a third of a second of quiet means they are done, and still feels instant.
pub const WATCH_QUIET: Duration = Duration::from_millis(300);

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// The operator sent SIGHUP.
    Signal,
    /// `--watch` saw the handler file of the listener with this index change.
    FileChanged(usize),
    /// `--watch` saw a certificate, key or CA file of the listener with
    /// this index change.
    TlsChanged(usize),
}

/// Asks the reload thread to reload. Cheap to clone.
#[derive(Clone)]
pub struct Reloader(Sender<Trigger>);

impl Reloader {
    /// Starts the reload thread: `on_signal` runs for each SIGHUP, and
    /// `on_change` with what changed ([`Trigger::FileChanged`] or
    /// [`Trigger::TlsChanged`]) once the watched files have been quiet for
    /// [`WATCH_QUIET`].
    pub fn spawn(
        mut on_signal: impl FnMut() + Send + 'static,
        mut on_change: impl FnMut(Trigger) + Send + 'static,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                // Reloading validates and compiles on this thread.
                sys::background_priority();
                reload_on_request(&rx, &mut on_signal, &mut on_change)
            })
            .context("cannot start the reload thread")?;
        Ok(Reloader(tx))
    }

    /// Requests a reload; it happens on the reload thread.
    pub fn request(&self, trigger: Trigger) {
        // Fails only if the reload thread is gone, i.e. the process is exiting.
        let _ = self.0.send(trigger);
    }

    /// Watches `path` and requests `trigger` whenever it changes. The watch
    /// lasts as long as the returned watcher is kept.
    pub fn watch(&self, trigger: Trigger, path: &Path) -> Result<RecommendedWatcher> {
        // Watch the directory, not the file: builds and editors replace the
        // file (a new inode), which a watch on the old one would not see.
        let path = std::path::absolute(path)?;
        let dir = path
            .parent()
            .with_context(|| format!("{} has no directory", path.display()))?
            .to_path_buf();
        let name = path
            .file_name()
            .with_context(|| format!("{} has no file name", path.display()))?
            .to_owned();
        let reloader = self.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event)
                    if changes_content(&event.kind)
                        && event.paths.iter().any(|p| {
                            let changed = p.file_name();
                            changed == Some(&name) || changed == Some(OsStr::new(KUBERNETES_DATA))
                        }) =>
                {
                    reloader.request(trigger);
                }
                Ok(_) => {}
                Err(e) => warn!("--watch: {e}"),
            })
            .with_context(|| format!("cannot watch {}", path.display()))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        info!("watching {} for changes", path.display());
        Ok(watcher)
    }
}

/// The link a Kubernetes ConfigMap or Secret volume swaps to update its
/// files at once: `handler.wasm` links to `..data/handler.wasm`, so the
/// file's content changes without an event naming it.
const KUBERNETES_DATA: &str = "..data";

/// Whether an event may have changed what the file holds. A removal alone
/// does not: there is nothing to load until the file comes back.
fn changes_content(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

fn reload_on_request(
    requests: &Receiver<Trigger>,
    on_signal: &mut dyn FnMut(),
    on_change: &mut dyn FnMut(Trigger),
) {
    while let Ok(trigger) = requests.recv() {
        let mut signalled = trigger == Trigger::Signal;
        let mut changed = BTreeSet::new();
        if trigger != Trigger::Signal {
            changed.insert(trigger);
            // Wait for the writers to finish; whatever else comes meanwhile
            // is folded in: a certificate and its key, renewed together,
            // are one reload.
            loop {
                match requests.recv_timeout(WATCH_QUIET) {
                    Ok(Trigger::Signal) => signalled = true,
                    Ok(trigger) => {
                        changed.insert(trigger);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        // A SIGHUP reloads everything, changed files included.
        match signalled {
            true => on_signal(),
            false => changed.into_iter().for_each(&mut *on_change),
        }
    }
}

/// Reloads `registry`'s handler from `path`, saying `why` in the log: what
/// SIGHUP does without a config file, and `--watch`.
pub fn reload_handler(registry: &Registry, path: &Path, why: &str) {
    let swapped =
        read_component(path).and_then(|bytes| registry.swap(path.display().to_string(), &bytes));
    match swapped {
        Ok(Swapped::Unchanged(current)) => {
            info!(
                "{why}: {} is unchanged; still serving {}",
                path.display(),
                current.id()
            );
        }
        Ok(Swapped::Replaced { .. }) => {} // the registry logs the swap
        Err(e) => warn!(
            "{why}: swap rejected ({}), still serving {}: {e}",
            e.reason(),
            registry.current().id()
        ),
    }
}
