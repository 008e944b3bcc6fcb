//! The WebAssembly side: engine, linker, what a guest may reach, and the
//! per-connection store.
//!
//! Costs are paid at the lifetime they belong to: the [`Sandbox`] (engine,
//! instance pool, linker, epoch ticker) once per process, a [`Handler`]
//! (compiled component and `InstancePre`) once per handler version, and only
//! a `Store` plus an instantiation per connection.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use anyhow::{Context as _, Result, anyhow};
use log::{Level, warn};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{Plugin, PluginPre};
use crate::cache::CodeCache;
use crate::connection::Connection;
use crate::console::Console;
use crate::handler::Handler;
use crate::limits::{CpuBudget, EPOCH_TICK, Failure, Limits, Meter, guest_backtrace};
use crate::watchdog::Watchdog;

/// Deepest a guest's stack may grow before it traps with a stack overflow:
/// wasmtime's default, which ordinary recursive code stays well inside.
pub const MAX_WASM_STACK: usize = 512 * 1024;

/// Stack of each connection thread. The guest runs on it, so it needs
/// [`MAX_WASM_STACK`] plus room for the host frames around and beneath the
/// guest (wasmtime, WASI, logging). Untouched pages cost no memory.
pub const CONNECTION_THREAD_STACK: usize = MAX_WASM_STACK + 1024 * 1024;

/// What one handler may use of the instance pool. Every pool slot can hold
/// any handler within these, which is what lets `--max-connections` size the
/// pool exactly. A Rust handler needs 1 memory, a few core instances and
/// tables; languages that link a runtime out of several modules need more.
const CORE_INSTANCES_PER_HANDLER: u32 = 32;
const MEMORIES_PER_HANDLER: u32 = 2;
const TABLES_PER_HANDLER: u32 = 32;

/// How much of a pool slot's memory and tables stays mapped and resident
/// between connections. Resetting it by writing beats handing the pages back
/// and faulting them in again for the next instance.
const KEEP_RESIDENT: usize = 1 << 20;

/// The data of one connection's store: everything the guest can reach.
pub struct ConnState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) meter: Meter,
    pub(crate) cpu: CpuBudget,
}

impl WasiView for ConnState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What a guest may reach beyond the connection: nothing unless granted.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Environment variables, `--env KEY=VALUE`.
    pub env: Vec<(String, String)>,
    /// Preopened directories, `--dir` and `--dir-rw`.
    pub dirs: Vec<Preopen>,
}

/// A host directory a guest may open, and under which path.
#[derive(Debug, Clone)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// The path the guest sees it as.
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
}

/// How one connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// `handle` returned `Ok`, or the guest called `exit(0)`.
    Finished,
    /// `handle` returned an error message.
    HandlerError(String),
    /// The instance was stopped: a trap, a limit, a non-zero exit.
    Failed {
        /// Why, in an operator's words.
        failure: Failure,
        /// The guest's backtrace, if one was captured.
        backtrace: Option<String>,
    },
}

/// Where a component's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Compiled just now: worth storing in the cache once validated.
    Fresh,
    /// Loaded as native code, from the cache or a .cwasm file: nothing to store.
    Loaded,
}

/// The engine, linker and limits shared by every handler version and connection.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<ConnState>,
    limits: Limits,
    capabilities: Capabilities,
    /// Held while validating a handler: its trial instance uses the one pool
    /// slot kept back for that, so it never competes with connections.
    trial_slot: Mutex<()>,
    cache: CodeCache,
    watchdog: Watchdog,
    _ticker: EpochTicker,
}

impl Sandbox {
    /// Configures the engine and its instance pool for `limits`, links WASI
    /// preview 2 plus `hotsock:plugin/types`, and starts the epoch ticker.
    ///
    /// Compiled handlers are cached in `cache_dir`, if given.
    pub fn new(
        limits: Limits,
        capabilities: Capabilities,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self> {
        // wasmtime compiles in parallel on rayon's global pool. Built here,
        // before anything compiles, with threads at background priority, so
        // that compiling a swapped-in handler never slows serving. (Only the
        // first Sandbox of a process gets to build it; later ones share it.)
        let _ = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("compile-{i}"))
            .start_handler(|_| background_priority())
            .build_global();
        for dir in &capabilities.dirs {
            anyhow::ensure!(
                dir.host.is_dir(),
                "--dir {}: no such directory on this machine",
                dir.host.display()
            );
        }
        let engine = Engine::new(&engine_config(&limits)).map_err(anyhow::Error::from)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(anyhow::Error::from)?;
        let ticker = EpochTicker::start(engine.weak())?;
        let cache = CodeCache::new(&engine, cache_dir);
        let watchdog = Watchdog::start(limits.idle_timeout, limits.max_connection_time)?;
        Ok(Sandbox {
            engine,
            linker,
            limits,
            capabilities,
            trial_slot: Mutex::new(()),
            cache,
            watchdog,
            _ticker: ticker,
        })
    }

    /// Loads a component's compiled code from the cache, or compiles it.
    /// Says which, so that only a fresh compilation is stored once validated.
    pub(crate) fn compile(
        &self,
        bytes: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, Compiled)> {
        match self.cache.load(&self.engine, sha256) {
            Some(component) => Ok((component, Compiled::Loaded)),
            None => Ok((Component::new(&self.engine, bytes)?, Compiled::Fresh)),
        }
    }

    /// Stores a validated component's compiled code in the cache.
    pub(crate) fn remember(&self, component: &Component, sha256: &str) {
        self.cache.store(component, sha256);
    }

    /// Loads a precompiled component (`hotsock compile` output).
    pub(crate) fn load_precompiled(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        warn!("loading precompiled native code: only load .cwasm files you compiled yourself");
        // SAFETY: precompiled code is native code. The operator handed this
        // file to hotsock (on the command line, or through the admin API,
        // which only listens on loopback unless explicitly opened), which is
        // the trust `hotsock compile` output needs; wasmtime still checks that
        // it was compiled for this engine's version and settings.
        unsafe { Component::deserialize(&self.engine, bytes) }
    }

    /// The engine handlers are compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The imports a handler may use.
    pub fn linker(&self) -> &Linker<ConnState> {
        &self.linker
    }

    /// The limits every connection runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Instantiates a handler once, under the same limits as a connection, so
    /// a handler that cannot start (too big for the pool, over the memory
    /// limit, trapping in its initialisation) is rejected before it serves.
    pub(crate) fn trial(&self, pre: &PluginPre<ConnState>, name: &str) -> Result<()> {
        let _slot = self.trial_slot.lock().unwrap_or_else(|e| e.into_inner());
        self.instantiate_pre(pre, &format!("checking {name}"))
            .map_err(|why| anyhow!("`{name}` cannot be instantiated: {why}"))
    }

    /// Does what every connection does before `handle` runs (a store with
    /// its limits and WASI context, and an instance) and drops the result:
    /// the per-connection cost `make bench` measures.
    pub fn instantiate(&self, handler: &Handler) -> Result<()> {
        self.instantiate_pre(handler.pre(), "bench")
            .map_err(|why| anyhow!(why))
    }

    fn instantiate_pre(&self, pre: &PluginPre<ConnState>, label: &str) -> Result<(), String> {
        let mut store = Store::new(
            &self.engine,
            self.conn_state(label).map_err(|e| format!("{e:#}"))?,
        );
        self.limits.confine(&mut store, None);
        match pre.instantiate(&mut store) {
            Ok(_) => Ok(()),
            Err(e) => Err(
                Failure::classify(&e, &self.limits, &store.data().meter).map_or_else(
                    || "it exited during initialisation".to_string(),
                    |f| f.to_string(),
                ),
            ),
        }
    }

    /// Runs `handler` on `conn` in a fresh instance until it returns. Either
    /// way the connection is closed when this returns, because the store that
    /// owns it is dropped.
    pub fn serve(&self, handler: &Handler, mut conn: Connection) -> Outcome {
        let state = match self.conn_state(conn.label()) {
            Ok(state) => state,
            Err(e) => return failed(Failure::Other(format!("{e:#}")), None),
        };
        let mut store = Store::new(&self.engine, state);
        self.limits
            .confine(&mut store, Some((&mut conn, &self.watchdog)));
        let result = store
            .data_mut()
            .table
            .push(conn)
            .map_err(wasmtime::Error::from)
            .and_then(|conn| {
                let plugin = handler.pre().instantiate(&mut store)?;
                plugin
                    .hotsock_plugin_handler()
                    .call_handle(&mut store, conn)
            });
        match result {
            Ok(Ok(())) => Outcome::Finished,
            Ok(Err(message)) => Outcome::HandlerError(message),
            Err(e) => match Failure::classify(&e, &self.limits, &store.data().meter) {
                None => Outcome::Finished,
                Some(failure) => {
                    let backtrace = failure
                        .is_guest_fault()
                        .then(|| guest_backtrace(&e))
                        .flatten();
                    failed(failure, backtrace)
                }
            },
        }
    }

    /// Deny-by-default WASI: no sockets, and only the environment and
    /// directories the operator granted; stdout and stderr go to the host log
    /// under `label`.
    fn conn_state(&self, label: &str) -> Result<ConnState> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(Console::new(format!("{label} stdout"), Level::Info))
            .stderr(Console::new(format!("{label} stderr"), Level::Warn))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &self.capabilities.env {
            wasi.env(key, value);
        }
        for dir in &self.capabilities.dirs {
            let perms = match dir.writable {
                true => FsPerms::ReadWrite,
                false => FsPerms::ReadOnly,
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot open --dir {}", dir.host.display()))?;
        }
        Ok(ConnState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            meter: Meter::default(),
            cpu: CpuBudget::default(),
        })
    }
}

/// Lowers the calling thread to background priority (nice 10): for threads
/// that compile and validate handlers, which must not take CPU from serving.
/// Best effort: if the system refuses, the thread keeps its priority.
pub fn background_priority() {
    // SAFETY: gettid and setpriority have no memory-safety preconditions; on
    // Linux a thread id names just that thread.
    unsafe {
        let thread = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, BACKGROUND_NICE);
    }
}

/// How much lower than serving threads compiling threads run: enough that
/// the scheduler gives serving nearly all of a busy CPU, while an idle
/// server still compiles at full speed.
const BACKGROUND_NICE: libc::c_int = 10;

fn failed(failure: Failure, backtrace: Option<String>) -> Outcome {
    Outcome::Failed { failure, backtrace }
}

/// The engine configuration: epoch interruption for the CPU budget, and an
/// instance pool sized by `--max-connections`.
fn engine_config(limits: &Limits) -> Config {
    // One slot per connection, plus one for validating a new handler.
    let slots = limits.max_connections.saturating_add(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_HANDLER))
        .max_core_instances_per_component(CORE_INSTANCES_PER_HANDLER)
        .total_memories(slots.saturating_mul(MEMORIES_PER_HANDLER))
        .max_memories_per_component(MEMORIES_PER_HANDLER)
        .total_tables(slots.saturating_mul(TABLES_PER_HANDLER))
        .max_tables_per_component(TABLES_PER_HANDLER)
        .max_memory_size(limits.max_memory)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// The one thread that advances the engine's epoch every [`EPOCH_TICK`], for
/// every store's CPU budget at once. It holds only a weak reference to the
/// engine, and is stopped and joined when dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: EngineWeak) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .context("cannot start the epoch ticker")?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
