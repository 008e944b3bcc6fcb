//! The WebAssembly side: engine, linker, and the per-connection store.
//!
//! Costs are paid at the lifetime they belong to: the [`Sandbox`] (engine and
//! linker) once per process, a [`Handler`] (compiled component and
//! `InstancePre`) once per handler version, and only a `Store` plus an
//! instantiation per connection.

use anyhow::Result;
use log::Level;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap, WasmBacktrace};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::Plugin;
use crate::connection::Connection;
use crate::console::Console;
use crate::handler::Handler;

/// Deepest a guest's stack may grow before it traps with a stack overflow:
/// wasmtime's default, which ordinary recursive code stays well inside.
pub const MAX_WASM_STACK: usize = 512 * 1024;

/// Stack of each connection thread. The guest runs on it, so it needs
/// [`MAX_WASM_STACK`] plus room for the host frames around and beneath the
/// guest (wasmtime, WASI, logging). Untouched pages cost no memory.
pub const CONNECTION_THREAD_STACK: usize = MAX_WASM_STACK + 1024 * 1024;

/// The data of one connection's store: everything the guest can reach.
pub struct ConnState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
}

impl WasiView for ConnState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// How one connection's handler ended, short of a trap.
pub type HandlerResult = Result<(), String>;

/// Says in one line why a connection's instance failed, followed by the
/// guest's backtrace when there is one, for the plugin author.
pub fn describe_failure(error: &wasmtime::Error) -> String {
    let mut text = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("handler failed: {error:#}"),
    };
    if let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() {
        // wasmtime's rendering knows about inlined frames and DWARF; only its
        // "error while executing at" header line is replaced.
        let rendered = backtrace.to_string();
        let frames = rendered.split_once('\n').map_or("", |(_, frames)| frames);
        text.push_str("\nguest backtrace:\n");
        text.push_str(frames);
    }
    text
}

/// The engine and linker shared by every handler version and connection.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<ConnState>,
}

impl Sandbox {
    /// Configures the engine and links WASI preview 2 plus `hotsock:plugin/types`.
    pub fn new() -> Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(anyhow::Error::from)?;
        Ok(Sandbox { engine, linker })
    }

    /// The engine handlers are compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The imports a handler may use.
    pub fn linker(&self) -> &Linker<ConnState> {
        &self.linker
    }

    /// Runs `handler` on `conn` in a fresh instance until it returns.
    ///
    /// `Err` is a trap or a failed instantiation; `Ok(Err(_))` is the handler's
    /// own error. Either way the connection is closed when this returns,
    /// because the store that owns it is dropped. `label` names the
    /// connection in the log lines of the guest's output.
    pub fn serve(
        &self,
        handler: &Handler,
        conn: Connection,
        label: &str,
    ) -> wasmtime::Result<HandlerResult> {
        let mut store = Store::new(&self.engine, self.conn_state(label));
        let conn = store.data_mut().table.push(conn)?;
        let plugin = handler.pre().instantiate(&mut store)?;
        plugin
            .hotsock_plugin_handler()
            .call_handle(&mut store, conn)
    }

    /// Deny-by-default WASI: no preopened directories, no environment, no
    /// sockets; stdout and stderr go to the host log under `label`.
    fn conn_state(&self, label: &str) -> ConnState {
        let wasi = WasiCtx::builder()
            .stdout(Console::new(format!("{label} stdout"), Level::Info))
            .stderr(Console::new(format!("{label} stderr"), Level::Warn))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        ConnState {
            wasi,
            table: ResourceTable::new(),
        }
    }
}
