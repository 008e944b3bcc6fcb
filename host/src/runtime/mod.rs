//! WebAssembly only: the engine and its instance pool, the linker, loading a
//! handler, the store a guest runs in and the resources it sees, the limits
//! applied to that store, how a guest stopped, the code cache and guest output.
//!
//! Nothing here knows about listening, accepting or handler versions: the
//! server hands over an accepted [`Connection`] and gets an [`Outcome`] back.
//!
//! - `engine`: [`Runtime`], built once per process: engine, pool, linker, epoch
//!   ticker; a [`Profile`] is what one listener's instances get.
//! - `handler`: [`Handler`], one compiled and validated component, and
//!   [`HandlerError`], every way a file can fail to be one.
//! - `store`: the data of one store, the WASI it gets and the
//!   `hotsock:plugin/types` host functions; [`Capabilities`] it may be granted.
//! - `connection`: [`Connection`], the client as the guest's resource.
//! - `limits`: [`Limits`] and the defaults, applied to every store in one function.
//! - `outcome`: [`Outcome`] and [`Fault`]: how a guest stopped, and whose fault it was.
//! - `cache`: compiled code on disk; `console`: guest stdout and stderr to the
//!   log, and the [`Fields`] that tie log lines to a connection;
//!   `bindings`: the `bindgen!` of `wit/plugin.wit`.

mod bindings;
mod cache;
mod connection;
mod console;
mod engine;
mod handler;
mod limits;
mod outcome;
mod store;

pub use cache::{CACHE_DIR_ENV, CacheStats, default_dir as default_cache_dir};
pub use connection::{Connection, MAX_READ, Traffic};
pub use console::Fields;
pub use engine::{Profile, Runtime, Settings, compile_in_background};
pub use handler::{
    HANDLER_EXPORT, Handler, HandlerError, Problem, Served, read_component, sha256_hex,
};
pub use limits::{
    DEFAULT_CPU_BUDGET, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MEMORY, GUEST_THREAD_STACK, Limits,
    MAX_WASM_STACK,
};
pub use outcome::{Fault, Outcome};
pub use store::{Capabilities, Preopen};
