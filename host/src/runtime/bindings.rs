//! Rust bindings for the `plugin` world in `wit/plugin.wit`, and nothing else.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // Host functions return `wasmtime::Result` so a host-side failure (such as a
    // stale resource handle) traps the guest instead of panicking the host.
    imports: { default: trappable },
    with: { "hotsock:plugin/types.connection": crate::runtime::connection::Connection },
});
