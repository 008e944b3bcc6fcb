//! Rust bindings for every contract version hotsock serves, and nothing else:
//! `wit/0.1.0/plugin.wit`, `wit/0.2.0/plugin.wit` and `wit/plugin.wit`
//! (0.3.0). A component is served by whichever version's `handler` it exports.

/// `hotsock:plugin@0.1.0`: a connection, and nothing else.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "plugin",
        // Host functions return `wasmtime::Result` so a host-side failure (such
        // as a stale resource handle) traps the guest instead of panicking the host.
        imports: { default: trappable },
        with: { "hotsock:plugin/types.connection": crate::runtime::connection::Connection },
    });
}

/// `hotsock:plugin@0.2.0`: the connection with `read-within`, rooms, and
/// `wasi:keyvalue` store and atomics.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "plugin",
        imports: { default: trappable },
        with: {
            "hotsock:plugin/types.connection": crate::runtime::connection::Connection,
            "wasi:keyvalue/store.bucket": crate::runtime::keyvalue::Bucket,
        },
    });
}

/// `hotsock:plugin@0.3.0`: 0.2.0 and the connection's `tls`. `wasi:keyvalue`
/// is the same package as 0.2.0's, so its bindings are 0.2.0's, host side included.
pub mod v0_3 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { default: trappable },
        with: {
            "hotsock:plugin/types.connection": crate::runtime::connection::Connection,
            "wasi:keyvalue": super::v0_2::wasi::keyvalue,
        },
    });
}
