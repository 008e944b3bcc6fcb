//! The host side of the contract, every version, on [`StoreData`]:
//! `hotsock:plugin/types` 0.1.0, 0.2.0 and 0.3.0 (the [`Connection`]), 0.2.0's
//! and 0.3.0's `rooms`, and `wasi:keyvalue` store and atomics (one package,
//! imported by both).
//!
//! Each function is a thin translation: the work is in `connection`, `rooms`
//! and `keyvalue`, which know nothing of bindings. A later version's
//! interface is generated anew even where it is unchanged, so what versions
//! share is written once, in the macros below, and instantiated per version.

use std::time::Duration;

use log::Level;
use wasmtime::component::Resource;

use crate::runtime::bindings::{v0_1, v0_2, v0_3};
use crate::runtime::bucket::KvError;
use crate::runtime::connection::{Connection, IoError, TlsInfo};
use crate::runtime::keyvalue::Bucket;
use crate::runtime::rooms::Refused;
use crate::runtime::store::StoreData;

use v0_2::wasi::keyvalue::store::{Error as KvErrorCode, KeyResponse};

/// Every version's `error-code` is the same three cases.
macro_rules! error_code {
    ($code:ty) => {
        impl From<IoError> for $code {
            fn from(error: IoError) -> Self {
                match error {
                    IoError::Closed => <$code>::Closed,
                    IoError::TimedOut => <$code>::TimedOut,
                    IoError::Refused => <$code>::Refused,
                }
            }
        }
    };
}
error_code!(v0_1::hotsock::plugin::types::ErrorCode);
error_code!(v0_2::hotsock::plugin::types::ErrorCode);
error_code!(v0_3::hotsock::plugin::types::ErrorCode);

/// What every version's `connection` does alike: all but `read-within`
/// (0.2.0 on) and `tls` (0.3.0 on).
macro_rules! connection_methods {
    ($code:ty) => {
        fn read(
            &mut self,
            conn: Resource<Connection>,
            max: u32,
        ) -> wasmtime::Result<Result<Vec<u8>, $code>> {
            self.count_io();
            Ok(self.table.get_mut(&conn)?.read(max).map_err(Into::into))
        }

        fn write(
            &mut self,
            conn: Resource<Connection>,
            data: Vec<u8>,
        ) -> wasmtime::Result<Result<(), $code>> {
            self.count_io();
            Ok(self.table.get_mut(&conn)?.write(&data).map_err(Into::into))
        }

        fn peer_addr(&mut self, conn: Resource<Connection>) -> wasmtime::Result<String> {
            Ok(self.table.get(&conn)?.peer().to_string())
        }

        fn id(&mut self, conn: Resource<Connection>) -> wasmtime::Result<u64> {
            Ok(self.table.get(&conn)?.id())
        }

        fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
            // Guests only ever borrow the connection, so this runs only if a
            // contract hands out owned handles; the host still closes the socket.
            self.table.delete(conn)?;
            Ok(())
        }
    };
}

impl v0_1::hotsock::plugin::types::Host for StoreData {}

impl v0_1::hotsock::plugin::types::HostConnection for StoreData {
    connection_methods!(v0_1::hotsock::plugin::types::ErrorCode);
}

/// `read-within`, which 0.2.0 added to the connection.
macro_rules! read_within {
    ($code:ty) => {
        fn read_within(
            &mut self,
            conn: Resource<Connection>,
            max: u32,
            timeout_ms: u32,
        ) -> wasmtime::Result<Result<Vec<u8>, $code>> {
            self.count_io();
            let timeout = Duration::from_millis(timeout_ms.into());
            Ok(self
                .table
                .get_mut(&conn)?
                .read_within(max, timeout)
                .map_err(Into::into))
        }
    };
}

impl v0_2::hotsock::plugin::types::Host for StoreData {}

impl v0_2::hotsock::plugin::types::HostConnection for StoreData {
    connection_methods!(v0_2::hotsock::plugin::types::ErrorCode);
    read_within!(v0_2::hotsock::plugin::types::ErrorCode);
}

impl v0_3::hotsock::plugin::types::Host for StoreData {}

impl v0_3::hotsock::plugin::types::HostConnection for StoreData {
    connection_methods!(v0_3::hotsock::plugin::types::ErrorCode);
    read_within!(v0_3::hotsock::plugin::types::ErrorCode);

    fn tls(
        &mut self,
        conn: Resource<Connection>,
    ) -> wasmtime::Result<Option<v0_3::hotsock::plugin::types::TlsInfo>> {
        Ok(self.table.get(&conn)?.tls().map(tls_info))
    }
}

/// A connection's [`TlsInfo`] as 0.3.0's `tls-info` record.
fn tls_info(tls: &TlsInfo) -> v0_3::hotsock::plugin::types::TlsInfo {
    v0_3::hotsock::plugin::types::TlsInfo {
        version: tls.version.clone(),
        cipher: tls.cipher.clone(),
        server_name: tls.server_name.clone(),
        alpn: tls.alpn.clone(),
        peer_certificates: tls.peer_certificates.clone(),
        peer_subject: tls.peer_subject.clone(),
    }
}

impl StoreData {
    /// Logs a refused room operation on the connection's log: the guest only
    /// learns `refused`, its author needs the why.
    fn refused<T, E: From<IoError>>(&self, what: &str, room: &str, why: Refused) -> Result<T, E> {
        self.fields.log(
            Level::Info,
            format_args!("room `{}`: {what} refused: {}", room.escape_debug(), why.0),
        );
        Err(IoError::Refused.into())
    }
}

/// `rooms`, the same in 0.2.0 and 0.3.0 but for the `error-code` type.
macro_rules! rooms {
    ($rooms:path, $code:ty) => {
        impl $rooms for StoreData {
            fn join(
                &mut self,
                conn: Resource<Connection>,
                room: String,
            ) -> wasmtime::Result<Result<(), $code>> {
                match self.table.get_mut(&conn)?.join(&room) {
                    Ok(()) => Ok(Ok(())),
                    Err(why) => Ok(self.refused("join", &room, why)),
                }
            }

            fn leave(&mut self, conn: Resource<Connection>, room: String) -> wasmtime::Result<()> {
                self.table.get_mut(&conn)?.leave(&room);
                Ok(())
            }

            fn publish(
                &mut self,
                conn: Resource<Connection>,
                room: String,
                data: Vec<u8>,
            ) -> wasmtime::Result<Result<u32, $code>> {
                self.count_io();
                match self.table.get(&conn)?.publish(&room, &data) {
                    Ok(queued) => Ok(Ok(queued)),
                    Err(why) => Ok(self.refused("publish", &room, why)),
                }
            }

            fn members(&mut self, room: String) -> wasmtime::Result<Vec<u64>> {
                // Rooms are the listener's: the store knows them from its connection.
                Ok(self
                    .rooms
                    .as_ref()
                    .map_or_else(Vec::new, |rooms| rooms.members(&room)))
            }
        }
    };
}
rooms!(
    v0_2::hotsock::plugin::rooms::Host,
    v0_2::hotsock::plugin::types::ErrorCode
);
rooms!(
    v0_3::hotsock::plugin::rooms::Host,
    v0_3::hotsock::plugin::types::ErrorCode
);

fn kv_error(error: KvError) -> KvErrorCode {
    KvErrorCode::Other(error.0)
}

impl v0_2::wasi::keyvalue::store::Host for StoreData {
    fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, KvErrorCode>> {
        if !self.granted_buckets.contains(&identifier) {
            let level = match self.buckets.first_denial(&identifier) {
                true => Level::Warn,
                false => Level::Debug,
            };
            self.fields.log(
                level,
                format_args!(
                    "denied: the handler tried to open key-value bucket `{}`; grant it with \
                     --keyvalue {} (said once per bucket; later denials are logged at debug level)",
                    identifier.escape_debug(),
                    identifier.escape_debug()
                ),
            );
            return Ok(Err(KvErrorCode::AccessDenied));
        }
        let backend = match self.buckets.open(&identifier) {
            Ok(backend) => backend,
            Err(e) => return Ok(Err(kv_error(e))),
        };
        let bucket = self.table.push(Bucket { backend })?;
        Ok(Ok(bucket))
    }
}

impl v0_2::wasi::keyvalue::store::HostBucket for StoreData {
    fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, KvErrorCode>> {
        Ok(self.table.get(&bucket)?.backend.get(&key).map_err(kv_error))
    }

    fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), KvErrorCode>> {
        Ok(self
            .table
            .get(&bucket)?
            .backend
            .set(&key, &value)
            .map_err(kv_error))
    }

    fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), KvErrorCode>> {
        Ok(self
            .table
            .get(&bucket)?
            .backend
            .delete(&key)
            .map_err(kv_error))
    }

    fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, KvErrorCode>> {
        Ok(self
            .table
            .get(&bucket)?
            .backend
            .exists(&key)
            .map_err(kv_error))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<KeyResponse, KvErrorCode>> {
        let keys = self.table.get(&bucket)?.backend.list_keys(cursor);
        Ok(keys
            .map(|page| KeyResponse {
                keys: page.keys,
                cursor: page.cursor,
            })
            .map_err(kv_error))
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl v0_2::wasi::keyvalue::atomics::Host for StoreData {
    fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, KvErrorCode>> {
        Ok(self
            .table
            .get(&bucket)?
            .backend
            .increment(&key, delta)
            .map_err(kv_error))
    }
}
