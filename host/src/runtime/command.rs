//! Running a WASI command component as a program (`hotsock run`): what
//! `cargo test` needs to run a handler crate's unit tests, which cargo builds
//! for wasm32-wasip2 as a command, with hotsock as its runner.
//!
//! Nothing here serves connections: a plain engine, all of WASI that a test
//! harness uses (stdio, arguments, environment, clocks), and no files or
//! sockets.

use std::path::Path;

use anyhow::{Context as _, Result};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceTable, ResourceType};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

struct Program {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Program {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Stands in for the handler contract, whose functions trap if called: a
/// handler crate's test harness still imports it (its `handle` export is
/// linked in), and tests that do not call it run fine. WASI itself is real.
fn stub_contract(
    engine: &Engine,
    component: &Component,
    linker: &mut Linker<Program>,
) -> Result<()> {
    /// The host type of any stubbed resource: nothing is ever made of it.
    struct Stub;
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let provided = name.starts_with("wasi:") && !name.starts_with("wasi:keyvalue/");
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if provided {
            continue;
        }
        let mut stub = linker.instance(name).map_err(anyhow::Error::from)?;
        for (export, item) in instance.exports(engine) {
            let denied =
                format!("{name}#{export} is the server's: `hotsock run` does not provide it");
            match item.ty {
                ComponentItem::ComponentFunc(_) => stub
                    .func_new(export, move |_, _, _, _| {
                        Err(wasmtime::Error::msg(denied.clone()))
                    })
                    .map_err(anyhow::Error::from)?,
                ComponentItem::Resource(_) => stub
                    .resource(export, ResourceType::host::<Stub>(), |_, _| Ok(()))
                    .map_err(anyhow::Error::from)?,
                _ => {}
            }
        }
    }
    Ok(())
}

/// Runs the command component at `path` with `args` (its own name first),
/// this process's stdio and environment, and returns its exit status.
pub fn run_command(path: &Path, args: &[String]) -> Result<i32> {
    let engine = Engine::default();
    let component = Component::from_file(&engine, path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot load {} as a component", path.display()))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
    stub_contract(&engine, &component, &mut linker)?;
    let mut wasi = WasiCtx::builder();
    wasi.inherit_stdio().inherit_env().args(args);
    let mut store = Store::new(
        &engine,
        Program {
            wasi: wasi.build(),
            table: ResourceTable::new(),
        },
    );
    let command = Command::instantiate(&mut store, &component, &linker)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "{} is not a WASI command (a program with a `main`, such as what `cargo test` \
                 builds for wasm32-wasip2)",
                path.display()
            )
        })?;
    match command.wasi_cli_run().call_run(&mut store) {
        Ok(Ok(())) => Ok(0),
        Ok(Err(())) => Ok(1),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(anyhow::Error::from(e).context(format!("{} trapped", path.display()))),
        },
    }
}
