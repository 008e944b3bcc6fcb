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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
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
/// any handler within these (and its [`Footprint`]'s memories), which is what
/// lets `--max-connections` size the pool exactly. A Rust handler needs 1
/// memory, a few core instances and tables; languages that link a runtime
/// out of several modules need more.
const CORE_INSTANCES_PER_HANDLER: u32 = 32;
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

/// Which instance pool a handler runs in, by the shape of its memory: the
/// choices wasmtime makes per engine, made here per handler, with an engine
/// and a pool for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Footprint {
    /// One linear memory, with at most [`Footprint::MAX_SMALL_DATA`] of
    /// initial data, written into it as each instance starts: the memory is
    /// one mapping, and its pool slot reserves address space for one memory.
    /// Rust handlers.
    Small,
    /// Up to two linear memories, their initial data mapped copy-on-write
    /// from the compiled code: instances share the pages they do not write,
    /// at the cost of two more mappings per memory. Python and JavaScript
    /// handlers, whose megabytes of initial data copying would make private.
    Large,
}

impl Footprint {
    /// The most initial data a small handler has. Copying it costs each
    /// instance at most this much private memory (the pages it would not
    /// have written), and saves two memory mappings, which
    /// `vm.max_map_count` makes the scarcer.
    pub const MAX_SMALL_DATA: u64 = 32 << 10;

    /// The footprint of a handler whose core modules define `memories`
    /// linear memories and initialise `data` bytes of them.
    pub fn of(memories: u64, data: u64) -> Self {
        if memories <= 1 && data <= Self::MAX_SMALL_DATA {
            Footprint::Small
        } else {
            Footprint::Large
        }
    }

    /// Most linear memories an instance of this footprint may have.
    pub fn max_memories(self) -> u32 {
        match self {
            Footprint::Small => 1,
            Footprint::Large => 2,
        }
    }

    /// Most memory mappings one linear memory takes in its pool slot. Small:
    /// the heap, and the reserve beyond it (whose protection differs). Large:
    /// also the copy-on-write image of the initial data and the part of the
    /// heap before it, each backed differently.
    pub fn mappings_per_memory(self) -> usize {
        match self {
            Footprint::Small => 2,
            Footprint::Large => 4,
        }
    }

    /// How `hotsock check` says what happens to the initial data.
    pub fn describe(self) -> &'static str {
        match self {
            Footprint::Small => "copied into each instance",
            Footprint::Large => "mapped copy-on-write",
        }
    }

    fn index(self) -> usize {
        match self {
            Footprint::Small => 0,
            Footprint::Large => 1,
        }
    }
}

/// An engine, its instance pool and linker: everything handlers of one
/// [`Footprint`] are compiled for and instantiated in.
struct Pool {
    engine: Engine,
    linker: Linker<StoreData>,
    /// Held while validating a handler: its trial instance uses the one pool
    /// slot kept back for that, so it never competes with connections.
    trial_slot: Mutex<()>,
    _ticker: EpochTicker,
}

impl Pool {
    /// Reserves the instance pool, links WASI preview 2 plus every contract
    /// version's imports, and starts the epoch ticker.
    fn new(settings: &RuntimeConfig, footprint: Footprint) -> Result<Self> {
        check_address_space(settings, footprint)?;
        let engine =
            Engine::new(&engine_config(settings, footprint)).map_err(anyhow::Error::from)?;
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
        Ok(Pool {
            engine,
            linker,
            trial_slot: Mutex::new(()),
            _ticker: ticker,
        })
    }
}

/// The engines and linkers shared by every handler version and instance.
pub struct Runtime {
    settings: RuntimeConfig,
    /// One per [`Footprint`], made when the first handler of it is loaded,
    /// so a server whose handlers are all alike reserves one pool.
    pools: [OnceLock<Pool>; 2],
    /// Held while making a pool, so two are never reserved for one footprint.
    making: Mutex<()>,
    cache: CodeCache,
    /// The key-value buckets, one per name for the whole process.
    buckets: Arc<Buckets>,
}

impl Runtime {
    /// Checks that the smaller instance pool fits this process's address
    /// space, and opens the code cache. Each instance pool is reserved when
    /// a handler first needs it.
    pub fn new(settings: RuntimeConfig) -> Result<Self> {
        check_address_space(&settings, Footprint::Small)?;
        let cache = CodeCache::new(settings.cache_dir.clone());
        let buckets = Arc::new(Buckets::new(
            settings.keyvalue_max_bytes,
            settings.keyvalue_store.clone(),
        ));
        Ok(Runtime {
            settings,
            pools: [OnceLock::new(), OnceLock::new()],
            making: Mutex::new(()),
            cache,
            buckets,
        })
    }

    /// The pool for handlers of `footprint`, reserved now if no handler
    /// needed it before.
    fn pool(&self, footprint: Footprint) -> Result<&Pool> {
        let cell = &self.pools[footprint.index()];
        if let Some(pool) = cell.get() {
            return Ok(pool);
        }
        let _making = sys::lock(&self.making);
        if let Some(pool) = cell.get() {
            return Ok(pool);
        }
        let pool = Pool::new(&self.settings, footprint).with_context(|| {
            format!(
                "cannot reserve the instance pool for handlers with {} linear memor{}",
                footprint.max_memories(),
                if footprint.max_memories() == 1 {
                    "y"
                } else {
                    "ies"
                },
            )
        })?;
        Ok(cell.get_or_init(|| pool))
    }

    /// The engine handlers of `footprint` are compiled for, its pool
    /// reserved now if need be.
    pub fn engine(&self, footprint: Footprint) -> Result<&Engine> {
        Ok(&self.pool(footprint)?.engine)
    }

    /// The imports a handler of `footprint` may use.
    pub fn linker(&self, footprint: Footprint) -> Result<&Linker<StoreData>> {
        Ok(&self.pool(footprint)?.linker)
    }

    /// The process's key-value buckets.
    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }

    /// Checks that this runtime can run instances under `profile`: its
    /// memory fits a pool slot, its directories exist, and the key-value
    /// store opens if it grants a bucket.
    pub fn admits(&self, profile: &Profile) -> Result<()> {
        anyhow::ensure!(
            profile.limits.max_memory <= self.settings.max_memory,
            "--max-memory {} is more than the {} the instance pool was made for: restart the \
             server to raise it",
            crate::units::format_size(profile.limits.max_memory),
            crate::units::format_size(self.settings.max_memory)
        );
        if !profile.capabilities.keyvalue.is_empty() {
            self.buckets.prepare().map_err(anyhow::Error::msg)?;
        }
        profile.capabilities.check()
    }

    /// Most instances alive at once, not counting the one kept for
    /// validating handlers.
    pub fn max_instances(&self) -> u32 {
        self.settings.max_instances
    }

    /// How often the code cache had a component compiled already.
    pub fn cache_stats(&self) -> crate::runtime::cache::CacheStats {
        self.cache.stats()
    }

    /// The cache of compiled code.
    pub fn cache(&self) -> &CodeCache {
        &self.cache
    }

    /// The slot of `footprint`'s pool kept for validating handlers, one at a
    /// time.
    pub fn trial_slot(&self, footprint: Footprint) -> Result<MutexGuard<'_, ()>> {
        Ok(sys::lock(&self.pool(footprint)?.trial_slot))
    }

    /// A fresh store in `engine` under `profile`'s limits and grants, whose
    /// guest logs with `fields` and reads clocks and random numbers from
    /// `inputs`; with a `verdict`, it is stopped once the watchdog closes its
    /// connection for good.
    pub fn store(
        &self,
        engine: &Engine,
        profile: &Profile,
        fields: &Fields,
        verdict: Option<Verdict>,
        inputs: &Inputs,
    ) -> Result<Store<StoreData>> {
        let buckets = Arc::clone(&self.buckets);
        let data = StoreData::new(fields, &profile.capabilities, buckets, inputs)?;
        let mut store = Store::new(engine, data);
        profile.limits.apply(&mut store, verdict, StoreData::usage);
        Ok(store)
    }

    /// Loads a precompiled component (`hotsock compile` output), and says
    /// which pool it was compiled for. The code does not say, so each engine
    /// is tried, those with a pool already first.
    ///
    /// # Safety
    ///
    /// The bytes are native code that will run in this process: they must
    /// come from `hotsock compile` (or [`Component::serialize`]), as handed
    /// over by someone trusted to run code here. wasmtime still checks that
    /// they were compiled for this engine's version and settings.
    pub unsafe fn deserialize(&self, bytes: &[u8]) -> Result<(Component, Footprint)> {
        let mut order = [Footprint::Small, Footprint::Large];
        order.sort_by_key(|footprint| self.pools[footprint.index()].get().is_none());
        let mut refusals = Vec::new();
        for footprint in order {
            // SAFETY: as the caller guarantees.
            match unsafe { Component::deserialize(self.engine(footprint)?, bytes) } {
                Ok(component) => return Ok((component, footprint)),
                Err(e) => refusals.push(format!("{e:#}")),
            }
        }
        refusals.dedup();
        anyhow::bail!("{}", refusals.join("; "))
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

/// Address space the pool for `footprint` reserves for each instance's
/// memories.
fn address_space_per_slot(settings: &RuntimeConfig, footprint: Footprint) -> u64 {
    let memory = MEMORY_RESERVATION.max(settings.max_memory as u64);
    u64::from(footprint.max_memories()) * (memory + MEMORY_GUARD)
}

/// Refuses a pool that cannot be reserved, before wasmtime tries and fails
/// with a bare "Cannot allocate memory", with what would fit instead. The
/// linear memories' slots are one reservation, so they need one free range
/// of address space, which is smaller than the address space in all.
fn check_address_space(settings: &RuntimeConfig, footprint: Footprint) -> Result<()> {
    let per_slot = address_space_per_slot(settings, footprint);
    let memories = footprint.max_memories();
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
         ({} MiB per connection: each may have {memories} linear memor{}, each \
         reserving 4 GiB plus a guard so that compiled code can skip bounds checks), more than \
         the {} GiB {why} lower --max-connections to at most {}",
        settings.max_instances,
        needed >> 30,
        per_slot >> 20,
        if memories == 1 { "y" } else { "ies" },
        available >> 30,
        (available / per_slot).saturating_sub(1)
    );
    Ok(())
}

/// The engine configuration: epoch interruption for the CPU budget, and an
/// instance pool sized by the most instances alive at once, for handlers of
/// `footprint`.
fn engine_config(settings: &RuntimeConfig, footprint: Footprint) -> Config {
    let memories = footprint.max_memories();
    // One slot per connection, plus one for validating a new handler.
    let slots = settings.max_instances.saturating_add(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_HANDLER))
        .max_core_instances_per_component(CORE_INSTANCES_PER_HANDLER)
        .total_memories(slots.saturating_mul(memories))
        .max_memories_per_component(memories)
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
        .memory_init_cow(footprint == Footprint::Large)
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
