//! HTTP/1.1 for the control plane (the admin API): where it listens (a TCP
//! address or a Unix socket), serving requests so that no client can hold the
//! server's memory or threads, and the one client that `hotsock swap`,
//! `status` and `rollback`, the tests and the bench use.
//!
//! hyper does the protocol; it runs on one thread with a tokio runtime of its
//! own, apart from the connection threads, which it never touches.
//!
//! - `endpoint`: [`Endpoint`] (`IP:PORT` or a path), binding it, and who is
//!   asking ([`Peer`]: Unix peer credentials, or a TCP address).
//! - `serve`: [`serve`] and the [`Routes`] a service implements.
//! - `client`: [`Client`].

mod client;
mod endpoint;
mod serve;

pub use client::{Client, Response, Unreachable};
pub use endpoint::{Endpoint, HttpListener, Peer, SocketFile, bind};
pub use serve::{Body, Closer, Reply, Routes, serve};
