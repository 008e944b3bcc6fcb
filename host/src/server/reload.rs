//! Reloading the handler from the file the server was started with: on
//! SIGHUP, and with `--watch` whenever the file changes.
//!
//! Every reload goes through one thread, so reloads never overlap and never
//! run on the accept path; the registry validates and compiles the new
//! component there before swapping it in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// How long the handler file must stay unchanged before `--watch` reads it.
/// Builds and editors write a file in several steps a few milliseconds apart;
/// a third of a second of quiet means they are done, and still feels instant.
pub const WATCH_QUIET: Duration = Duration::from_millis(300);

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The operator sent SIGHUP.
    Signal,
    /// `--watch` saw the file change.
    FileChanged,
}

impl Trigger {
    fn describe(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChanged => "--watch",
        }
    }
}

/// Asks the reload thread to reload the handler. Cheap to clone.
#[derive(Clone)]
pub struct Reloader(Sender<Trigger>);

impl Reloader {
    /// Starts the reload thread for the handler at `path`.
    pub fn spawn(registry: Arc<Registry>, path: PathBuf) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                // Reloading validates and compiles on this thread.
                sys::background_priority();
                reload_on_request(&registry, &path, &rx)
            })
            .context("cannot start the reload thread")?;
        Ok(Reloader(tx))
    }

    /// Requests a reload; it happens on the reload thread.
    pub fn request(&self, trigger: Trigger) {
        // Fails only if the reload thread is gone, i.e. the process is exiting.
        let _ = self.0.send(trigger);
    }

    /// Watches `path` and requests a reload whenever it changes. The watch
    /// lasts as long as the returned watcher is kept.
    pub fn watch(&self, path: &Path) -> Result<RecommendedWatcher> {
        // Watch the directory, not the file: builds and editors replace the
        // file (a new inode), which a watch on the old one would not see.
        let path = std::path::absolute(path)?;
        let dir = path
            .parent()
            .context("the handler path has no directory")?
            .to_path_buf();
        let name = path
            .file_name()
            .context("the handler path has no file name")?
            .to_owned();
        let reloader = self.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event)
                    if changes_content(&event.kind)
                        && event.paths.iter().any(|p| p.file_name() == Some(&name)) =>
                {
                    reloader.request(Trigger::FileChanged);
                }
                Ok(_) => {}
                Err(e) => warn!("--watch: {e}"),
            })
            .context("cannot watch the handler file")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        info!("watching {} for changes", path.display());
        Ok(watcher)
    }
}

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

fn reload_on_request(registry: &Registry, path: &Path, requests: &Receiver<Trigger>) {
    while let Ok(mut trigger) = requests.recv() {
        if trigger == Trigger::FileChanged {
            // Wait for the writer to finish; a SIGHUP meanwhile is folded in.
            loop {
                match requests.recv_timeout(WATCH_QUIET) {
                    Ok(Trigger::Signal) => trigger = Trigger::Signal,
                    Ok(Trigger::FileChanged) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        reload(registry, path, trigger);
    }
}

fn reload(registry: &Registry, path: &Path, trigger: Trigger) {
    let why = trigger.describe();
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
