//! WebAssembly only: the engine and its instance pool, the linker, loading a
//! handler, the store a guest runs in and the resources it sees, the limits
//! applied to that store, how a guest stopped, the code cache and guest output.
//!
//! Nothing here knows about listening, accepting or handler versions: the
//! server hands over an accepted [`Connection`] and gets an [`Outcome`] back.
//!
//! The module map, one line per file, is `docs/architecture.md`.

mod backtrace;
mod bindings;
mod bridge;
mod bucket;
mod cache;
mod command;
mod connection;
mod console;
mod contract;
mod engine;
mod fleet;
mod handler;
mod keyvalue;
mod limits;
mod outbound;
mod outcome;
mod record;
mod redis_store;
mod rooms;
mod sqlite;
mod store;
mod transcript;

pub use bridge::{Bridge, Side};
pub use bucket::{Backend, Keys, KvError, MAX_KEY, MAX_VALUE};
pub use cache::{CACHE_DIR_ENV, CacheStats, default_dir as default_cache_dir};
pub use command::run_command;
pub use connection::{Connection, MAX_READ, TlsInfo, Traffic};
pub use console::Fields;
pub use engine::{Footprint, Profile, Runtime, RuntimeConfig, compile_in_background};
pub use fleet::{Fleet, FleetStats, NODE_SHIFT, NODE_TTL, RoomsStore};
pub use handler::{
    HANDLER_EXPORT, Handler, HandlerError, OLDER_HANDLER_EXPORTS, Problem, Served, read_component,
    sha256_hex,
};
pub use keyvalue::{Buckets, DEFAULT_MAX_BUCKET_BYTES, KEYVALUE_FILE, KeyValueStore};
pub use limits::{
    DEFAULT_CPU_BUDGET, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MEMORY, GUEST_THREAD_STACK, Limits,
    MAX_WASM_STACK,
};
pub use outbound::{ConnectGrant, MAX_OUTBOUND_PER_CONNECTION};
pub use outcome::{Fault, Outcome};
pub use record::{DEFAULT_RECORD_MAX_BYTES, Recording};
pub use rooms::{DEFAULT_ROOM_BACKLOG, MAX_ROOM_NAME, MAX_ROOMS_PER_CONNECTION, Rooms};
pub use store::{Capabilities, Preopen};
pub use transcript::{Entry, Transcript, escape};
