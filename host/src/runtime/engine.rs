//! The runtime: one wasmtime engine and its instance pool, the linker, the
//! epoch ticker and the code cache, built once per process, and the stores
//! that every instance runs in.
//!
//! Costs are paid at the lifetime they belong to: the [`Runtime`] once per
//! process, a handler (compiled component and `InstancePre`) once per
//! version, and only a `Store` plus an instantiation per connection.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use anyhow::{Context as _, Result};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    WasmBacktraceDetails,
};

use crate::runtime::backtrace::MAX_BACKTRACE_FRAMES;
use crate::runtime::bindings::{v0_1, v0_2, v0_3};
use crate::runtime::cache::CodeCache;
use crate::runtime::console::Fields;
use crate::runtime::keyvalue::{Buckets, DEFAULT_MAX_BUCKET_BYTES, KeyValueStore};
use crate::runtime::limits::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MEMORY, EPOCH_TICK, Limits, MAX_WASM_STACK,
};
use crate::runtime::record::{Inputs, Recording};
use crate::runtime::store::{Capabilities, StoreData};
use crate::sys;
use crate::watchdog::Verdict;

/// What one handler may use of the instance pool. Every pool slot can hold
/// any handler within these, which is what lets `--max-connections` size the
/// pool exactly. A Rust handler needs 1 memory, a few core instances and
/// tables; languages that link a runtime out of several modules need more.
const CORE_INSTANCES_PER_HANDLER: u32 = 32;
const MEMORIES_PER_HANDLER: u32 = 2;
const TABLES_PER_HANDLER: u32 = 32;

/// Address space each linear memory's pool slot reserves, and the guard
/// after it: wasmtime's defaults on 64-bit hosts, set here so that the pool's
/// size can be known before it is reserved. 4 GiB covers every 32-bit
/// address, so compiled code skips almost every bounds check.
const MEMORY_RESERVATION: u64 = 4 << 30;
const MEMORY_GUARD: u64 = 32 << 20;

/// How much of a pool slot's memory and tables stays mapped and resident
/// between connections. Resetting it by writing beats handing the pages back
/// and faulting them in again for the next instance.
const KEEP_RESIDENT: usize = 1 << 20;

/// How the runtime is set up: the pool, and the code cache.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most instances alive at once: one per connection, on every listener.
    /// It sizes the pool, which also keeps one slot back for validating new
    /// handlers.
    pub max_instances: u32,
    /// Most linear memory any instance may have: the size of a pool slot.
    /// Each [`Profile`] may allow less.
    pub max_memory: usize,
    /// Where compiled handlers are cached, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of keys and values one key-value bucket holds.
    pub keyvalue_max_bytes: usize,
    /// Where key-value buckets live.
    pub keyvalue_store: KeyValueStore,
}

impl Default for RuntimeConfig {
    /// What `hotsock serve` uses by default, without a code cache.
    fn default() -> Self {
        RuntimeConfig {
            max_instances: DEFAULT_MAX_CONNECTIONS,
            max_memory: DEFAULT_MAX_MEMORY,
            cache_dir: None,
            keyvalue_max_bytes: DEFAULT_MAX_BUCKET_BYTES,
            keyvalue_store: KeyValueStore::Memory,
        }
    }
}

/// What the instances of one listener get: their limits and grants.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// The limits each instance runs under.
    pub limits: Limits,
    /// What its guest may reach beyond its connection.
    pub capabilities: Capabilities,
    /// Where its connections are recorded, if they are (`--record`).
    pub record: Option<Recording>,
}

/// The engine and linker shared by every handler version and instance.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreData>,
    max_instances: u32,
    max_memory: usize,
    /// Held while validating a handler: its trial instance uses the one pool
    /// slot kept back for that, so it never competes with connections.
    trial_slot: Mutex<()>,
    cache: CodeCache,
    /// The key-value buckets, one per name for the whole process.
    buckets: Arc<Buckets>,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Configures the engine and its instance pool, links WASI preview 2
    /// plus every contract version's imports, and starts the epoch ticker.
    pub fn new(settings: RuntimeConfig) -> Result<Self> {
        check_address_space(&settings)?;
        let engine = Engine::new(&engine_config(&settings)).map_err(anyhow::Error::from)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        // Their interfaces are versioned, so the contracts link side by side;
        // 0.3.0's `wasi:keyvalue` is 0.2.0's, linked once.
        v0_1::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)?;
        v0_2::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)?;
        v0_3::hotsock::plugin::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)?;
        v0_3::hotsock::plugin::rooms::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)?;
        let ticker = EpochTicker::start(engine.weak())?;
        let cache = CodeCache::new(&engine, settings.cache_dir);
        Ok(Runtime {
            engine,
            linker,
            max_instances: settings.max_instances,
            max_memory: settings.max_memory,
            trial_slot: Mutex::new(()),
            cache,
            buckets: Arc::new(Buckets::new(
                settings.keyvalue_max_bytes,
                settings.keyvalue_store,
            )),
            _ticker: ticker,
        })
    }

    /// The process's key-value buckets.
    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }

    /// The engine handlers are compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The imports a handler may use.
    pub fn linker(&self) -> &Linker<StoreData> {
        &self.linker
    }

    /// Checks that this runtime can run instances under `profile`: its
    /// memory fits a pool slot, its directories exist, and the key-value
    /// store opens if it grants a bucket.
    pub fn admits(&self, profile: &Profile) -> Result<()> {
        anyhow::ensure!(
            profile.limits.max_memory <= self.max_memory,
            "--max-memory {} is more than the {} the instance pool was made for: restart the \
             server to raise it",
            crate::units::format_size(profile.limits.max_memory),
            crate::units::format_size(self.max_memory)
        );
        if !profile.capabilities.keyvalue.is_empty() {
            self.buckets.prepare().map_err(anyhow::Error::msg)?;
        }
        profile.capabilities.check()
    }

    /// Most instances alive at once, not counting the one kept for
    /// validating handlers.
    pub fn max_instances(&self) -> u32 {
        self.max_instances
    }

    /// How often the code cache had a component compiled already.
    pub fn cache_stats(&self) -> crate::runtime::cache::CacheStats {
        self.cache.stats()
    }

    /// The cache of compiled code.
    pub fn cache(&self) -> &CodeCache {
        &self.cache
    }

    /// The pool slot kept for validating handlers, one at a time.
    pub fn trial_slot(&self) -> MutexGuard<'_, ()> {
        sys::lock(&self.trial_slot)
    }

    /// A fresh store under `profile`'s limits and grants, whose guest logs
    /// with `fields` and reads clocks and random numbers from `inputs`; with
    /// a `verdict`, it is stopped once the watchdog closes its connection for
    /// good.
    pub fn store(
        &self,
        profile: &Profile,
        fields: &Fields,
        verdict: Option<Verdict>,
        inputs: &Inputs,
    ) -> Result<Store<StoreData>> {
        let buckets = Arc::clone(&self.buckets);
        let data = StoreData::new(fields, &profile.capabilities, buckets, inputs)?;
        let mut store = Store::new(&self.engine, data);
        profile.limits.apply(&mut store, verdict, StoreData::usage);
        Ok(store)
    }

    /// Loads a precompiled component (`hotsock compile` output).
    ///
    /// # Safety
    ///
    /// The bytes are native code that will run in this process: they must
    /// come from `hotsock compile` (or [`Component::serialize`]), as handed
    /// over by someone trusted to run code here. wasmtime still checks that
    /// they were compiled for this engine's version and settings.
    pub unsafe fn deserialize(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: as the caller guarantees.
        unsafe { Component::deserialize(&self.engine, bytes) }
    }
}

/// Builds rayon's global pool, on which wasmtime compiles in parallel, with
/// its threads at background priority, so that compiling a swapped-in
/// handler never slows serving. Call it before anything compiles; only the
/// first call in a process has any effect.
pub fn compile_in_background() {
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("compile-{i}"))
        .start_handler(|_| sys::background_priority())
        .build_global();
}

/// Address space the instance pool reserves for each instance's memories.
fn address_space_per_slot(settings: &RuntimeConfig) -> u64 {
    let memory = MEMORY_RESERVATION.max(settings.max_memory as u64);
    u64::from(MEMORIES_PER_HANDLER) * (memory + MEMORY_GUARD)
}

/// Refuses a pool that cannot be reserved, before wasmtime tries and fails
/// with a bare "Cannot allocate memory", with what would fit instead. The
/// linear memories' slots are one reservation, so they need one free range
/// of address space, which is smaller than the address space in all.
fn check_address_space(settings: &RuntimeConfig) -> Result<()> {
    let per_slot = address_space_per_slot(settings);
    let slots = u64::from(settings.max_instances) + 1;
    let needed = slots.saturating_mul(per_slot);
    let largest = sys::largest_free_address_range()?;
    let (available, why) = match sys::address_space_limit()? {
        Some(limit) if limit < largest => (
            limit,
            "ulimit -v allows; raise it with `ulimit -v unlimited`, or",
        ),
        _ => (largest, "free in one piece in this process, so"),
    };
    anyhow::ensure!(
        needed <= available,
        "--max-connections {} needs {} GiB of address space in one piece for its instance pool \
         ({} MiB per connection: each may have {MEMORIES_PER_HANDLER} linear memories, each \
         reserving 4 GiB plus a guard so that compiled code can skip bounds checks), more than \
         the {} GiB {why} lower --max-connections to at most {}",
        settings.max_instances,
        needed >> 30,
        per_slot >> 20,
        available >> 30,
        (available / per_slot).saturating_sub(1)
    );
    Ok(())
}

/// The engine configuration: epoch interruption for the CPU budget, and an
/// instance pool sized by the most instances alive at once.
fn engine_config(settings: &RuntimeConfig) -> Config {
    // One slot per connection, plus one for validating a new handler.
    let slots = settings.max_instances.saturating_add(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_HANDLER))
        .max_core_instances_per_component(CORE_INSTANCES_PER_HANDLER)
        .total_memories(slots.saturating_mul(MEMORIES_PER_HANDLER))
        .max_memories_per_component(MEMORIES_PER_HANDLER)
        .total_tables(slots.saturating_mul(TABLES_PER_HANDLER))
        .max_tables_per_component(TABLES_PER_HANDLER)
        .max_memory_size(settings.max_memory)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto)
        // Guests are called synchronously, on their connection's thread, so
        // the pool of async fiber stacks would go unused: by default it is
        // 1,000 stacks of 2 MiB, each with a guard page, which is 2,000
        // memory mappings and 2 GiB of address space for nothing.
        .total_stacks(0);
    let mut config = Config::new();
    config
        .memory_reservation(MEMORY_RESERVATION)
        .memory_guard_size(MEMORY_GUARD)
        .wasm_component_model(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .epoch_interruption(true)
        // A guest backtrace names the handler's files and lines when the
        // component carries DWARF, whatever WASMTIME_BACKTRACE_DETAILS says:
        // compiling keeps its debug sections, and a trap reads them.
        .wasm_backtrace_details(WasmBacktraceDetails::Enable)
        .wasm_backtrace_max_frames(NonZeroUsize::new(MAX_BACKTRACE_FRAMES))
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
                    thread::park_timeout(EPOCH_TICK);
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
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
