//! Integration tests: each one starts the real `hotsock` binary on
//! 127.0.0.1:0 and talks to it over TCP. `make test` builds the guest
//! components they load (the default handler, the example handlers in
//! `handlers/`, and the fixtures in `tests/fixtures/`) and installs
//! componentize-py before running them.

mod util;

mod abuse;
mod admin;
mod bad_handler;
mod capabilities;
mod cli;
mod client;
mod compile;
mod concurrency;
mod contract;
mod crashes;
mod dev;
mod docs;
mod echo;
mod fleet;
mod guest_output;
mod handlers;
mod isolation;
mod library;
mod limits;
mod operations;
mod redis;
mod replay;
mod rooms_fleet;
mod scaffold;
mod scale;
mod shutdown;
mod state;
mod swap;
mod tls;
mod upgrades;
