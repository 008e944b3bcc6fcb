//! The server as a library: `hotsock::server::Server` started in process on
//! 127.0.0.1:0 from a `Config`, reconfigured through its `Control` as
//! SIGHUP would, and stopped; no binary, no command line.

use std::thread;

use hotsock::runtime::{KeyValueStore, RoomsStore};
use hotsock::server::{Config, Drain, ListenerConfig, ListenerSettings, Server, Takeover};

use crate::util::{ask, connect, echo_line, wasm};

fn config(handler: &str, greeting: &str) -> Config {
    let mut settings = ListenerSettings::default();
    settings.rules.max_connections = 4;
    settings.profile.capabilities.env = vec![("GREETING".into(), greeting.into())];
    Config {
        listeners: vec![ListenerConfig {
            name: "default".into(),
            addrs: vec!["127.0.0.1:0".into()],
            reuse_port: false,
            handler: wasm(handler),
            watch: false,
            settings,
            tls: None,
        }],
        named: false,
        drain: Drain::default(),
        admin: None,
        metrics: None,
        cache_dir: None,
        keyvalue_max_bytes: 1 << 20,
        keyvalue_store: KeyValueStore::Memory,
        rooms_store: RoomsStore::Local,
    }
}

#[test]
fn a_server_runs_in_process_is_reconfigured_whole_and_stops() {
    let server = Server::start(config("guest_handler", "unused"), Takeover::none()).unwrap();
    let [announced] = server.announcements() else {
        panic!("{:?}", server.announcements());
    };
    let addr = announced
        .strip_prefix(hotsock::server::LISTENING)
        .unwrap()
        .parse()
        .unwrap();
    let control = server.control();
    let stopper = server.stopper();
    let running = thread::spawn(move || server.run());

    let mut client = connect(addr);
    assert!(echo_line(&mut client, "before").contains("before"));

    // A new handler and new grants, in one call: new connections get both.
    let done = control.reconfigure(config("probe", "hello")).unwrap();
    assert!(done.contains("v1-") && done.contains(" -> v2-"), "{done}");
    assert_eq!(ask(&mut connect(addr), "env GREETING\n"), "hello");
    // The connection opened before finishes on its own version.
    assert!(echo_line(&mut client, "after").contains("after"));

    // A change that cannot be made while serving changes nothing.
    let mut bigger = config("guest_handler", "hello");
    bigger.listeners[0].settings.rules.max_connections = 8;
    let error = format!("{:#}", control.reconfigure(bigger).unwrap_err());
    assert!(error.contains("max-connections cannot change"), "{error}");
    assert_eq!(ask(&mut connect(addr), "env GREETING\n"), "hello");

    drop(client);
    stopper.stop();
    running.join().unwrap().unwrap();
}
