//! One thread per connection: clients are served at the same time.

use std::io::Write;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Server, echo, reply};

#[test]
fn fifty_concurrent_clients_each_get_exactly_their_own_data() {
    const CLIENTS: usize = 50;
    let server = Server::start("guest_handler");
    // Everyone connects before anyone talks, so all 50 are open at once.
    let ready = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = server.connect();
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                ready.wait();
                for round in 0..5 {
                    let payload = format!("client {i} round {round} {}", "x".repeat(i * 13));
                    assert_eq!(
                        echo(&mut client, payload.as_bytes()).concat(),
                        payload.as_bytes()
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client
            .join()
            .expect("a client got someone else's data or none");
    }
}

#[test]
fn slow_handlers_do_not_wait_for_each_other() {
    const CLIENTS: usize = 10;
    let server = Server::start("probe");
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| server.connect()).collect();
    let started = Instant::now();
    // Send every request before reading any reply: served one after the
    // other these would take 10 s, served in parallel about 1 s.
    for client in &mut clients {
        client.write_all(b"sleep 1000").unwrap();
    }
    for client in &mut clients {
        assert_eq!(reply(client), "slept 1000");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "10 one-second requests took {elapsed:?}"
    );
}
