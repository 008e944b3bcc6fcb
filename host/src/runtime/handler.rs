//! A handler version: a component that has been validated, compiled and
//! pre-linked, so serving a connection only has to instantiate it.
//!
//! Every way a file can fail to be a handler is a [`Problem`] here, with a
//! stable [`Problem::reason`] for programs (the admin API answers with it)
//! and one line for people that says what is wrong and what to do.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use log::warn;
use sha2::{Digest, Sha256};
use wasmparser::Parser;
use wasmtime::component::{Component, Resource};
use wasmtime::{Engine, Precompiled};

use crate::runtime::bindings::{v0_1, v0_2, v0_3};
use crate::runtime::connection::Connection;
use crate::runtime::console::Fields;
use crate::runtime::engine::{Footprint, Profile, Runtime};
use crate::runtime::outcome::{Fault, Outcome};
use crate::runtime::record::{Inputs, Recorder, Replay};
use crate::runtime::store::StoreData;
use crate::runtime::transcript::Transcript;

/// The interface a handler exports: the `handler` of `wit/plugin.wit`, the
/// contract this hotsock speaks.
pub const HANDLER_EXPORT: &str = "hotsock:plugin/handler@0.3.0";

/// The same export of the contracts before it, still served, newest first.
pub const OLDER_HANDLER_EXPORTS: [&str; 2] = [EXPORT_0_2, EXPORT_0_1];

/// The `handler` of `wit/0.2.0/plugin.wit`.
const EXPORT_0_2: &str = "hotsock:plugin/handler@0.2.0";

/// The `handler` of `wit/0.1.0/plugin.wit`.
const EXPORT_0_1: &str = "hotsock:plugin/handler@0.1.0";

/// A handler pre-linked for the contract version it was built against.
enum Pre {
    V0_1(v0_1::PluginPre<StoreData>),
    V0_2(v0_2::PluginPre<StoreData>),
    V0_3(v0_3::PluginPre<StoreData>),
}

/// `$body` with `$pre` bound to whichever version's `PluginPre` `$which`
/// holds: the generated types have the same methods but no common trait.
macro_rules! with_pre {
    ($which:expr, $pre:ident => $body:expr) => {
        match $which {
            Pre::V0_3($pre) => $body,
            Pre::V0_2($pre) => $body,
            Pre::V0_1($pre) => $body,
        }
    };
}

/// Why a file is not a handler this hotsock can serve.
#[derive(Debug)]
pub struct HandlerError {
    /// How the file was named: its path, or `upload`.
    pub name: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a file offered as a handler.
#[derive(Debug)]
pub enum Problem {
    /// The file cannot be read.
    Unreadable(std::io::Error),
    /// A core WebAssembly module, not a component.
    CoreModule,
    /// Not WebAssembly at all.
    NotAComponent,
    /// A component that does not validate or compile.
    Invalid(String),
    /// Native code precompiled by another hotsock version or settings.
    ForeignPrecompiled(String),
    /// A precompiled core module.
    PrecompiledModule,
    /// A native-code file that is not a precompiled component.
    DamagedPrecompiled,
    /// A component that does not export the handler interface; it exports these.
    MissingExport(Vec<String>),
    /// A component that imports something hotsock does not provide.
    UnsupportedImport(String),
    /// A component that exports the handler interface with other types.
    WrongExportShape(String),
    /// A component that cannot be instantiated under the server's limits.
    CannotInstantiate(String),
    /// A component whose instances, as many as the server may run at once,
    /// would need more of the machine than it allows.
    ExceedsCapacity(String),
}

impl Problem {
    /// A short stable name for the problem, for programs to branch on.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Unreadable(_) => "unreadable",
            Problem::CoreModule => "core-module",
            Problem::NotAComponent => "not-a-component",
            Problem::Invalid(_) => "invalid-component",
            Problem::ForeignPrecompiled(_) => "foreign-precompiled",
            Problem::PrecompiledModule => "precompiled-module",
            Problem::DamagedPrecompiled => "damaged-precompiled",
            Problem::MissingExport(_) => "missing-export",
            Problem::UnsupportedImport(_) => "unsupported-import",
            Problem::WrongExportShape(_) => "wrong-export-shape",
            Problem::CannotInstantiate(_) => "cannot-instantiate",
            Problem::ExceedsCapacity(_) => "exceeds-capacity",
        }
    }
}

impl HandlerError {
    /// The `problem` with the file called `name`.
    pub fn new(name: &str, problem: Problem) -> Self {
        HandlerError {
            name: name.to_string(),
            problem,
        }
    }

    /// [`Problem::reason`] of the problem.
    pub fn reason(&self) -> &'static str {
        self.problem.reason()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.problem {
            Problem::Unreadable(e) => write!(
                f,
                "cannot read handler `{name}`: {e}; pass the path of a handler component \
                 (`make build` writes the default one to target/wasm32-wasip2/release/guest_handler.wasm)"
            ),
            Problem::CoreModule => write!(
                f,
                "`{name}` is a core WebAssembly module, not a component: build the handler with \
                 `cargo build --target wasm32-wasip2`, or wrap the module with `wasm-tools component new`"
            ),
            Problem::NotAComponent => write!(
                f,
                "`{name}` is not a WebAssembly component (it lacks the `\\0asm` component header): \
                 pass a handler built for wasm32-wasip2 against wit/plugin.wit"
            ),
            Problem::Invalid(why) => write!(f, "`{name}` is not a valid component: {why}"),
            Problem::ForeignPrecompiled(why) => write!(
                f,
                "`{name}` is a precompiled component this hotsock cannot load ({why}): it was compiled by \
                 another hotsock version or with other settings; run `hotsock compile` on the .wasm again"
            ),
            Problem::PrecompiledModule => write!(
                f,
                "`{name}` is a precompiled core module, not a component: precompile handler components \
                 with `hotsock compile`"
            ),
            Problem::DamagedPrecompiled => write!(
                f,
                "`{name}` is a native-code file but not a precompiled component this hotsock can load \
                 (damaged, or not made by `hotsock compile`): run `hotsock compile` on the .wasm again"
            ),
            Problem::MissingExport(exports) => {
                let exports = match exports.is_empty() {
                    true => "nothing".to_string(),
                    false => exports.join(", "),
                };
                write!(
                    f,
                    "`{name}` does not export `{HANDLER_EXPORT}` (nor the older `{}`; it exports \
                     {exports}): hotsock calls the function `handle` of the interface `handler` \
                     (in JavaScript `export const handler = {{ handle(conn) {{ ... }} }}`, in \
                     Python `class Handler(exports.Handler)`, in Rust `impl Guest` and `export!`); \
                     build it as a library against wit/plugin.wit, world `plugin`",
                    OLDER_HANDLER_EXPORTS.join("`, `")
                )
            }
            Problem::UnsupportedImport(why) => {
                write!(
                    f,
                    "`{name}` needs an import hotsock does not provide ({why}): a handler may import \
                     only what wit/plugin.wit's world `plugin` does (`hotsock:plugin/types`, `rooms`, \
                     `wasi:keyvalue` store and atomics) and WASI 0.2 interfaces"
                )?;
                if why.contains("wasi:http/") {
                    write!(f, "{WASI_HTTP_HINT}")?;
                }
                Ok(())
            }
            Problem::WrongExportShape(why) => write!(
                f,
                "`{name}` exports `{HANDLER_EXPORT}` with the wrong shape ({why}): rebuild it against wit/plugin.wit"
            ),
            Problem::CannotInstantiate(why) => write!(f, "`{name}` cannot be instantiated: {why}"),
            Problem::ExceedsCapacity(why) => write!(f, "`{name}` cannot be served here: {why}"),
        }
    }
}

/// What to change when a handler imports `wasi:http`, which hotsock does not
/// give handlers: the likely author is componentize-js, whose defaults import it.
const WASI_HTTP_HINT: &str = "; a JavaScript handler built by componentize-js imports wasi:http \
     unless built with `-d http fetch-event` (the scaffold's `npm run build` does: \
     `componentize-js app.js --wit wit --world-name plugin -d http fetch-event -o NAME.wasm`)";

/// No `source`: the message already says everything, the I/O error included,
/// and an error chain printed with `{:#}` would say it twice.
impl std::error::Error for HandlerError {}

/// Reads a handler component file, with an error that says what to do.
pub fn read_component(path: &Path) -> Result<Vec<u8>, HandlerError> {
    std::fs::read(path)
        .map_err(|e| HandlerError::new(&path.display().to_string(), Problem::Unreadable(e)))
}

/// The sha256 of `bytes`, in hex: part of a version id, and the cache key.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The linear memories the component's core modules define, and the bytes
/// of them their active data segments initialise, summed over all modules:
/// what decides its [`Footprint`], before it is compiled for one. What does
/// not parse counts as nothing; compiling says what is wrong with it.
fn memory_shape(bytes: &[u8]) -> (u64, u64) {
    let (mut memories, mut data) = (0, 0);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::MemorySection(section)) => {
                memories += u64::from(section.count());
            }
            Ok(wasmparser::Payload::DataSection(section)) => {
                data += section
                    .into_iter()
                    .flatten()
                    .filter(|segment| matches!(segment.kind, wasmparser::DataKind::Active { .. }))
                    .map(|segment| segment.data.len() as u64)
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (memories, data)
}

/// What serving one connection came to.
#[derive(Debug)]
pub struct Served {
    /// How it ended.
    pub outcome: Outcome,
    /// How long the instance took to create, if it was.
    pub instantiated_in: Option<Duration>,
}

/// A compiled, validated handler component, ready to instantiate per connection.
pub struct Handler {
    name: String,
    sha256: String,
    imports: Vec<String>,
    /// The `handler` interface it exports, which says its contract version.
    export: &'static str,
    /// Linear memories each instance has.
    memories: usize,
    /// Which engine and instance pool it runs in.
    footprint: Footprint,
    /// The engine it was compiled for.
    engine: Engine,
    pre: Pre,
}

impl Handler {
    /// Reads, validates and compiles the handler component at `path`, to run
    /// under `profile`.
    pub fn load(runtime: &Runtime, profile: &Profile, path: &Path) -> Result<Self, HandlerError> {
        let bytes = read_component(path)?;
        let sha256 = sha256_hex(&bytes);
        Self::compile(
            runtime,
            profile,
            path.display().to_string(),
            &bytes,
            &sha256,
        )
    }

    /// Validates and compiles a handler component held in memory, whose
    /// sha256 is `sha256`; `name` is how errors and logs refer to it.
    ///
    /// The component is instantiated once, under `profile`, so a handler that
    /// cannot start (too big for a pool slot, over the memory limit, trapping
    /// as it initialises) is rejected before it serves.
    pub fn compile(
        runtime: &Runtime,
        profile: &Profile,
        name: String,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Self, HandlerError> {
        let fail = |problem| HandlerError::new(&name, problem);
        // Reserving a pool fails only when the machine cannot hold it.
        let capacity = |e: anyhow::Error| fail(Problem::ExceedsCapacity(format!("{e:#}")));
        let (component, fresh, footprint) = match Engine::detect_precompiled(bytes) {
            Some(Precompiled::Component) => {
                warn!(
                    "loading precompiled native code: only load .cwasm files you compiled yourself"
                );
                // SAFETY: precompiled code is native code. The operator handed
                // this file to hotsock (on the command line, or through the
                // admin API), which is the trust `hotsock compile` output needs.
                let loaded = unsafe { runtime.deserialize(bytes) };
                let (component, footprint) =
                    loaded.map_err(|e| fail(Problem::ForeignPrecompiled(format!("{e:#}"))))?;
                (component, false, footprint)
            }
            Some(Precompiled::Module) => return Err(fail(Problem::PrecompiledModule)),
            None if bytes.starts_with(b"\x7fELF") => return Err(fail(Problem::DamagedPrecompiled)),
            None if Parser::is_core_wasm(bytes) => return Err(fail(Problem::CoreModule)),
            None if !Parser::is_component(bytes) => return Err(fail(Problem::NotAComponent)),
            None => {
                let (memories, data) = memory_shape(bytes);
                let footprint = Footprint::of(memories, data);
                let load = |footprint| {
                    let engine = runtime.engine(footprint).map_err(capacity)?;
                    match runtime.cache().load(engine, sha256) {
                        Some(component) => Ok((component, false)),
                        None => Component::new(engine, bytes)
                            .map(|compiled| (compiled, true))
                            .map_err(|e| fail(Problem::Invalid(format!("{e:#}")))),
                    }
                };
                let (component, fresh) = load(footprint)?;
                // A module instantiated twice has two memories though it
                // defines one: only the compiled component knows for sure.
                let instantiated = component
                    .resources_required()
                    .map_or(0, |r| u64::from(r.num_memories));
                if instantiated > u64::from(footprint.max_memories()) {
                    let (component, fresh) = load(Footprint::Large)?;
                    (component, fresh, Footprint::Large)
                } else {
                    (component, fresh, footprint)
                }
            }
        };

        let ty = component.component_type();
        let engine = component.engine();
        let Some(export) = std::iter::once(HANDLER_EXPORT)
            .chain(OLDER_HANDLER_EXPORTS)
            .find(|export| ty.get_export(engine, export).is_some())
        else {
            let exports = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
            return Err(fail(Problem::MissingExport(exports)));
        };
        let imports = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let memories = component
            .resources_required()
            .map_or(0, |r| r.num_memories as usize);
        let pre = runtime
            .linker(footprint)
            .map_err(capacity)?
            .instantiate_pre(&component)
            .map_err(|e| fail(Problem::UnsupportedImport(format!("{e:#}"))))?;
        let shape = |e: wasmtime::Error| fail(Problem::WrongExportShape(format!("{e:#}")));
        let pre = match export {
            HANDLER_EXPORT => Pre::V0_3(v0_3::PluginPre::new(pre).map_err(shape)?),
            EXPORT_0_2 => Pre::V0_2(v0_2::PluginPre::new(pre).map_err(shape)?),
            _ => Pre::V0_1(v0_1::PluginPre::new(pre).map_err(shape)?),
        };
        let handler = Handler {
            name: name.clone(),
            sha256: sha256.to_string(),
            imports,
            export,
            memories,
            footprint,
            engine: engine.clone(),
            pre,
        };
        handler.check(runtime, profile)?;
        // Only validated code is worth keeping: rejected files take no space.
        if fresh {
            runtime.cache().store(&component, sha256);
        }
        Ok(handler)
    }

    /// Instantiates the handler once under `profile`, in the pool slot kept
    /// back for that: a handler that cannot start under it (too big for a
    /// pool slot, over the memory limit, trapping as it initialises) is
    /// refused before a connection would find out. A reload that changes a
    /// listener's limits checks the versions it keeps with this.
    pub fn check(&self, runtime: &Runtime, profile: &Profile) -> Result<(), HandlerError> {
        let _slot = runtime.trial_slot(self.footprint).map_err(|e| {
            HandlerError::new(&self.name, Problem::ExceedsCapacity(format!("{e:#}")))
        })?;
        self.instantiate(
            runtime,
            profile,
            &Fields::none().text("checking", &self.name),
        )
        .map_err(|why| HandlerError::new(&self.name, Problem::CannotInstantiate(why)))
    }

    /// Runs `handle` on `conn` in a fresh instance until it returns, and
    /// says how it ended. Either way the connection is closed when this
    /// returns, because the store that owns it is dropped.
    pub fn serve(
        &self,
        runtime: &Runtime,
        profile: &Profile,
        fields: &Fields,
        mut conn: Connection,
    ) -> Served {
        let Some(recording) = &profile.record else {
            return self.run(runtime, profile, fields, conn, &Inputs::Real);
        };
        let header = vec![
            "hotsock transcript: one client connection; replay it with `hotsock test HANDLER FILE`"
                .to_string(),
            format!(
                "conn {} from {}, handler {} (sha256 {})",
                conn.id(),
                conn.peer(),
                self.name,
                &self.sha256[..16]
            ),
        ];
        let recorder = Arc::new(Recorder::new(recording, conn.id(), header));
        conn.record(Arc::clone(&recorder));
        let served = self.run(
            runtime,
            profile,
            fields,
            conn,
            &Inputs::Record(Arc::clone(&recorder)),
        );
        if let Err(e) = recorder.finish() {
            fields.log(
                log::Level::Warn,
                format_args!(
                    "cannot write its transcript to {}: {e}",
                    recording.dir.display()
                ),
            );
        }
        served
    }

    /// Replays `transcript` as one connection, in process: the client's
    /// recorded bytes are read, the recorded clock readings and random bytes
    /// fed back. Returns what the handler wrote, one element a write, and
    /// how it ended.
    pub fn replay(
        &self,
        runtime: &Runtime,
        profile: &Profile,
        transcript: &Transcript,
    ) -> (Vec<Vec<u8>>, Outcome) {
        let replay = Arc::new(Replay::new(transcript));
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let conn = Connection::replay(1, peer, Arc::clone(&replay), Arc::default());
        let fields = Fields::none().text("replaying", &self.name);
        let served = self.run(
            runtime,
            profile,
            &fields,
            conn,
            &Inputs::Replay(Arc::clone(&replay)),
        );
        (replay.written(), served.outcome)
    }

    fn run(
        &self,
        runtime: &Runtime,
        profile: &Profile,
        fields: &Fields,
        conn: Connection,
        inputs: &Inputs,
    ) -> Served {
        let error = |e: String| Served {
            outcome: Outcome::Faulted {
                fault: Fault::Error(e),
                backtrace: None,
            },
            instantiated_in: None,
        };
        let mut store = match runtime.store(&self.engine, profile, fields, conn.verdict(), inputs) {
            Ok(store) => store,
            Err(e) => return error(format!("{e:#}")),
        };
        let handle = match store.data_mut().insert(conn) {
            Ok(handle) => handle,
            Err(e) => return error(format!("{e:#}")),
        };
        // The guest only borrows the connection: the store keeps it, so its
        // fate can be read after the call, and closes it when dropped.
        let kept = Resource::<Connection>::new_borrow(handle.rep());
        let started = Instant::now();
        let mut instantiated_in = None;
        let result = with_pre!(&self.pre, pre => pre.instantiate(&mut store).and_then(|plugin| {
            instantiated_in = Some(started.elapsed());
            plugin
                .hotsock_plugin_handler()
                .call_handle(&mut store, handle)
        }));
        let data = store.data();
        let expired = data.connection(&kept).and_then(Connection::expired);
        Served {
            outcome: Outcome::of(result, expired, &profile.limits, data.memory_denied()),
            instantiated_in,
        }
    }

    /// Does what every connection does before `handle` runs (a store with
    /// its limits and WASI context, and an instance) and drops the result:
    /// the per-connection cost `make bench` measures.
    pub fn instantiate(
        &self,
        runtime: &Runtime,
        profile: &Profile,
        fields: &Fields,
    ) -> Result<(), String> {
        let mut store = runtime
            .store(&self.engine, profile, fields, None, &Inputs::Real)
            .map_err(|e| format!("{e:#}"))?;
        let instantiated = with_pre!(&self.pre, pre => pre.instantiate(&mut store).map(drop));
        match instantiated {
            Ok(()) => Ok(()),
            Err(e) => {
                let limits = &profile.limits;
                match Fault::classify(&e, limits, store.data().memory_denied()) {
                    Some(fault) => Err(fault.to_string()),
                    None => Err("it exited during initialisation".to_string()),
                }
            }
        }
    }

    /// The component's compiled code, for `hotsock compile` to write out.
    pub fn precompiled(&self) -> Result<Vec<u8>> {
        Ok(with_pre!(&self.pre, pre => pre.instance_pre().component().serialize())?)
    }

    /// The sha256 of the file the handler was loaded from, in hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Where the handler came from, for logs and errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Linear memories each instance has.
    pub fn memories(&self) -> usize {
        self.memories
    }

    /// Most memory mappings one instance adds to the process while it lives:
    /// what `vm.max_map_count` must leave room for, per connection.
    pub fn mappings_per_instance(&self) -> usize {
        self.memories * self.footprint.mappings_per_memory()
    }

    /// Which instance pool it runs in, by the shape of its memory.
    pub fn footprint(&self) -> Footprint {
        self.footprint
    }

    /// The `handler` interface it exports, e.g. `hotsock:plugin/handler@0.3.0`.
    pub fn export(&self) -> &'static str {
        self.export
    }

    /// The contract version it was built against, e.g. `0.3.0`.
    pub fn contract(&self) -> &'static str {
        self.export
            .rsplit_once('@')
            .map_or(self.export, |(_, version)| version)
    }

    /// The interfaces the handler imports, as named in the component.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The componentize-js hint is for a wasi:http import only: any other
    /// refused import gets the general message alone.
    #[test]
    fn only_a_wasi_http_import_gets_the_componentize_js_hint() {
        let message = |why: &str| {
            HandlerError::new("h.wasm", Problem::UnsupportedImport(why.to_string())).to_string()
        };
        let http = message("component imports instance `wasi:http/types@0.2.10`");
        assert!(http.ends_with(WASI_HTTP_HINT), "{http}");
        let other = message("component imports instance `wasi:nn/graph@0.2.0`");
        assert!(!other.contains("componentize-js"), "{other}");
    }
}
