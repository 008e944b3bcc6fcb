//! A handler version: a component that has been validated, compiled and
//! pre-linked, so serving a connection only has to instantiate it.
//!
//! Every way a file can fail to be a handler is reported here, in one line
//! that says what is wrong and what to do about it.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use sha2::{Digest, Sha256};
use wasmparser::Parser;
use wasmtime::{Engine, Precompiled};

use crate::bindings::PluginPre;
use crate::sandbox::{Compiled, ConnState, Sandbox};

/// The interface a handler must export: the `handler` of `wit/plugin.wit`.
pub const HANDLER_EXPORT: &str = "hotsock:plugin/handler@0.1.0";

/// Reads a handler component file, with an error that says what to do.
pub fn read_component(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        anyhow!(
            "cannot read handler `{}`: {e}; pass the path of a handler component \
             (`make build` writes the default one to target/wasm32-wasip2/release/guest_handler.wasm)",
            path.display()
        )
    })
}

/// The sha256 of `bytes`, in hex: part of a version id, and the cache key.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Rejects files that are not components, with what to do instead.
fn check_header(name: &str, bytes: &[u8]) -> Result<()> {
    if Parser::is_core_wasm(bytes) {
        bail!(
            "`{name}` is a core WebAssembly module, not a component: build the handler with \
             `cargo build --target wasm32-wasip2`, or wrap the module with `wasm-tools component new`"
        );
    }
    if !Parser::is_component(bytes) {
        bail!(
            "`{name}` is not a WebAssembly component (it lacks the `\\0asm` component header): \
             pass a handler built for wasm32-wasip2 against wit/plugin.wit"
        );
    }
    Ok(())
}

/// A compiled, validated handler component, ready to instantiate per connection.
pub struct Handler {
    name: String,
    sha256: String,
    imports: Vec<String>,
    pre: PluginPre<ConnState>,
}

impl Handler {
    /// Reads, validates and compiles the handler component at `path`.
    pub fn load(sandbox: &Sandbox, path: &Path) -> Result<Self> {
        Self::from_bytes(sandbox, path.display().to_string(), &read_component(path)?)
    }

    /// Validates and compiles a handler component held in memory; `name` is
    /// how errors and logs refer to it.
    pub fn from_bytes(sandbox: &Sandbox, name: String, bytes: &[u8]) -> Result<Self> {
        Self::compile(sandbox, name, bytes, &sha256_hex(bytes))
    }

    /// Like [`Handler::from_bytes`], for a caller that already knows the
    /// component's sha256.
    pub fn compile(sandbox: &Sandbox, name: String, bytes: &[u8], sha256: &str) -> Result<Self> {
        let (component, compiled) = match Engine::detect_precompiled(bytes) {
            Some(Precompiled::Component) => sandbox.load_precompiled(bytes).map(|c| (c, Compiled::Loaded)).map_err(|e| {
                anyhow!(
                    "`{name}` is a precompiled component this hotsock cannot load ({e:#}): it was compiled by \
                     another hotsock version or with other settings; run `hotsock compile` on the .wasm again"
                )
            })?,
            Some(Precompiled::Module) => bail!(
                "`{name}` is a precompiled core module, not a component: precompile handler components \
                 with `hotsock compile`"
            ),
            None if bytes.starts_with(b"\x7fELF") => bail!(
                "`{name}` is a native-code file but not a precompiled component this hotsock can load \
                 (damaged, or not made by `hotsock compile`): run `hotsock compile` on the .wasm again"
            ),
            None => {
                check_header(&name, bytes)?;
                sandbox
                    .compile(bytes, sha256)
                    .map_err(|e| anyhow!("`{name}` is not a valid component: {e:#}"))?
            }
        };

        let ty = component.component_type();
        let engine = sandbox.engine();
        if ty.get_export(engine, HANDLER_EXPORT).is_none() {
            let exports: Vec<_> = ty.exports(engine).map(|(n, _)| n).collect();
            let exports = match exports.is_empty() {
                true => "nothing".to_string(),
                false => exports.join(", "),
            };
            bail!(
                "`{name}` does not export `{HANDLER_EXPORT}` (it exports {exports}): build it as a \
                 library against wit/plugin.wit, world `plugin`"
            );
        }
        let imports = ty.imports(engine).map(|(n, _)| n.to_string()).collect();

        let pre = sandbox.linker().instantiate_pre(&component).map_err(|e| {
            anyhow!(
                "`{name}` needs an import hotsock does not provide ({e:#}): a handler may import \
                 only `hotsock:plugin/types` and WASI 0.2 interfaces"
            )
        })?;
        let pre = PluginPre::new(pre).map_err(|e| {
            anyhow!("`{name}` exports `{HANDLER_EXPORT}` with the wrong shape ({e:#}): rebuild it against wit/plugin.wit")
        })?;
        sandbox.trial(&pre, &name)?;
        if compiled == Compiled::Fresh {
            sandbox.remember(&component, sha256);
        }
        Ok(Handler {
            name,
            sha256: sha256.to_string(),
            imports,
            pre,
        })
    }

    /// The component's compiled code, for `hotsock compile` to write out.
    pub fn precompiled(&self) -> Result<Vec<u8>> {
        Ok(self.pre.instance_pre().component().serialize()?)
    }

    /// The sha256 of the file the handler was loaded from, in hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Where the handler came from, for logs and errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interfaces the handler imports, as named in the component.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// The pre-linked component, instantiated once per connection.
    pub(crate) fn pre(&self) -> &PluginPre<ConnState> {
        &self.pre
    }
}
