//! The data of one connection's store: everything a guest can reach, and the
//! host side of `hotsock:plugin/types` that it reaches the client through.
//!
//! One struct owns the WASI context, the resource table (which holds the
//! [`Connection`]) and the limits' per-store [`Usage`], and implements the
//! view traits, as wasmtime-wasi's own hosts do.

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};
use log::Level;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::runtime::bindings::hotsock::plugin::types::{ErrorCode, Host, HostConnection};
use crate::runtime::connection::{Connection, IoError};
use crate::runtime::console::{Console, Fields};
use crate::runtime::limits::Usage;

/// What a guest may reach beyond its connection: nothing unless granted.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Environment variables, `--env KEY=VALUE`.
    pub env: Vec<(String, String)>,
    /// Preopened directories, `--dir` and `--dir-rw`.
    pub dirs: Vec<Preopen>,
}

impl Capabilities {
    /// Checks that every granted directory exists, so a typo fails at start
    /// rather than as a denied open in some connection later.
    pub fn check(&self) -> Result<()> {
        for dir in &self.dirs {
            ensure!(
                dir.host.is_dir(),
                "--dir {}: no such directory on this machine",
                dir.host.display()
            );
        }
        Ok(())
    }
}

/// A host directory a guest may open, and under which path.
#[derive(Debug, Clone)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// The path the guest sees it as.
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
}

/// The data of one store: what its guest can reach.
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    usage: Usage,
}

impl StoreData {
    /// Deny-by-default WASI: no sockets, and only the environment and
    /// directories in `capabilities`; stdout and stderr go to the host log
    /// with `fields`.
    pub fn new(fields: &Fields, capabilities: &Capabilities) -> Result<Self> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(Console::new(fields, "stdout", Level::Info))
            .stderr(Console::new(fields, "stderr", Level::Warn))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &capabilities.env {
            wasi.env(key, value);
        }
        for dir in &capabilities.dirs {
            let perms = match dir.writable {
                true => FsPerms::ReadWrite,
                false => FsPerms::ReadOnly,
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot open --dir {}", dir.host.display()))?;
        }
        Ok(StoreData {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            usage: Usage::default(),
        })
    }

    /// The limits' state, for [`crate::runtime::limits::Limits::apply`].
    pub fn usage(&mut self) -> &mut Usage {
        &mut self.usage
    }

    /// Whether the guest was denied memory.
    pub fn memory_denied(&self) -> bool {
        self.usage.memory_denied()
    }

    /// Hands the connection to the store, for the guest to borrow.
    pub fn insert(&mut self, conn: Connection) -> wasmtime::Result<Resource<Connection>> {
        Ok(self.table.push(conn)?)
    }

    /// The connection the store holds under `handle`, if it still does.
    pub fn connection(&self, handle: &Resource<Connection>) -> Option<&Connection> {
        self.table.get(handle).ok()
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The contract's error for a failed read or write.
fn error_code(error: IoError) -> ErrorCode {
    match error {
        IoError::Closed => ErrorCode::Closed,
        IoError::TimedOut => ErrorCode::TimedOut,
        IoError::Refused => ErrorCode::Refused,
    }
}

impl Host for StoreData {}

impl HostConnection for StoreData {
    fn read(
        &mut self,
        conn: Resource<Connection>,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        self.usage.count_io();
        Ok(self.table.get_mut(&conn)?.read(max).map_err(error_code))
    }

    fn write(
        &mut self,
        conn: Resource<Connection>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.usage.count_io();
        Ok(self.table.get_mut(&conn)?.write(&data).map_err(error_code))
    }

    fn peer_addr(&mut self, conn: Resource<Connection>) -> wasmtime::Result<String> {
        Ok(self.table.get(&conn)?.peer().to_string())
    }

    fn id(&mut self, conn: Resource<Connection>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&conn)?.id())
    }

    fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
        // Guests only ever borrow the connection, so this runs only if a future
        // contract hands out owned handles; the host still closes the socket.
        self.table.delete(conn)?;
        Ok(())
    }
}
