//! The data of one connection's store: everything a guest can reach.
//!
//! One struct owns the WASI context, the resource table (which holds the
//! [`Connection`] and any open buckets), the limits' per-store [`Usage`] and
//! the grants, and implements the view traits, as wasmtime-wasi's own hosts
//! do. The contract's host functions on it are in `contract`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, ensure};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::runtime::connection::Connection;
use crate::runtime::console::{Console, Fields};
use crate::runtime::keyvalue::Buckets;
use crate::runtime::limits::Usage;
use crate::runtime::outbound::{Check, ConnectGrant};
use crate::runtime::record::Inputs;
use crate::runtime::rooms::Rooms;

/// What a guest may reach beyond its connection: nothing unless granted.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Environment variables, `--env KEY=VALUE`.
    pub env: Vec<(String, String)>,
    /// Preopened directories, `--dir` and `--dir-rw`.
    pub dirs: Vec<Preopen>,
    /// Key-value buckets it may open, `--keyvalue NAME`.
    pub keyvalue: Arc<[String]>,
    /// Where it may open TCP connections, `--allow-connect HOST:PORT`.
    pub connect: Arc<[ConnectGrant]>,
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
    pub(super) table: ResourceTable,
    usage: Usage,
    /// The process's key-value buckets, and which of them it may open.
    pub(super) buckets: Arc<Buckets>,
    pub(super) granted_buckets: Arc<[String]>,
    /// Its connection's log fields, for what the host logs on its behalf.
    pub(super) fields: Fields,
    /// Its connection's listener's rooms, once it holds the connection.
    pub(super) rooms: Option<Arc<Rooms>>,
}

impl StoreData {
    /// Deny-by-default WASI: only the environment, directories and TCP
    /// destinations in `capabilities`; stdout and stderr go to the host log
    /// with `fields`. `buckets` are the process's key-value buckets, of which
    /// it may open those `capabilities` grant; its clocks and random numbers
    /// come from `inputs`.
    pub fn new(
        fields: &Fields,
        capabilities: &Capabilities,
        buckets: Arc<Buckets>,
        inputs: &Inputs,
    ) -> Result<Self> {
        let mut wasi = WasiCtxBuilder::new();
        inputs.apply(&mut wasi);
        let check = Check::new(Arc::clone(&capabilities.connect), fields.clone());
        wasi.stdout(Console::new(fields, "stdout"))
            .stderr(Console::new(fields, "stderr"))
            // TCP is on so that every attempt reaches the check, which allows
            // only the grants and logs what it refuses; UDP stays off.
            .allow_tcp(true)
            .socket_addr_check(check.into_fn())
            .allow_udp(false)
            .allow_ip_name_lookup(capabilities.connect.iter().any(ConnectGrant::is_name));
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
            buckets,
            granted_buckets: Arc::clone(&capabilities.keyvalue),
            fields: fields.clone(),
            rooms: None,
        })
    }

    /// The limits' state, for [`crate::runtime::limits::Limits::apply`].
    pub fn usage(&mut self) -> &mut Usage {
        &mut self.usage
    }

    /// Counts a call on the connection, for the limits.
    pub(super) fn count_io(&mut self) {
        self.usage.count_io();
    }

    /// Whether the guest was denied memory.
    pub fn memory_denied(&self) -> bool {
        self.usage.memory_denied()
    }

    /// Hands the connection to the store, for the guest to borrow.
    pub fn insert(&mut self, conn: Connection) -> wasmtime::Result<Resource<Connection>> {
        self.rooms = Some(Arc::clone(conn.rooms()));
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
