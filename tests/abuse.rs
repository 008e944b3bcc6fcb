//! Clients that misbehave at the TCP level: random bytes, half-closed sockets,
//! resets, connect-and-vanish. No panic, and no connection slot leaks.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Bystander, Server, TIMEOUT, connect, echo};

/// Makes closing the socket send a reset instead of an orderly FIN.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    let done = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(done, 0, "setsockopt(SO_LINGER)");
}

/// A small deterministic generator: the test needs varied bytes, not secrets.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

fn abuse(addr: SocketAddr, seed: u64) {
    let mut stream = connect(addr);
    match seed % 4 {
        // Random bytes, then read whatever comes back, then close.
        0 => {
            let bytes = noise(seed, 1 + (seed as usize * 37) % 5000);
            assert_eq!(echo(&mut stream, &bytes).concat(), bytes);
        }
        // Half-close: send, shut down our side, read the replies until the server closes.
        1 => {
            stream.write_all(&noise(seed, 100)).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let mut sink = Vec::new();
            stream
                .read_to_end(&mut sink)
                .expect("the server closes after our half-close");
            assert!(sink.starts_with(b"Echo=>"));
        }
        // Reset in the middle of a conversation.
        2 => {
            stream.write_all(&noise(seed, 3000)).unwrap();
            reset_on_close(&stream);
        }
        // Connect and vanish without a word.
        _ => {}
    }
}

#[test]
fn misbehaving_clients_leak_no_slot_and_crash_nothing() {
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let bystander = Bystander::start(server.addr());
    let workers: Vec<_> = (0..4u64)
        .map(|worker| {
            let addr = server.addr();
            thread::spawn(move || {
                for round in 0..25 {
                    abuse(addr, worker * 1000 + round);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a client thread failed");
    }
    bystander.finish();

    let deadline = Instant::now() + TIMEOUT;
    loop {
        let connections = &server.status()["connections"];
        if connections["active"] == 0 {
            // The bystander and every client that talked; one that reset or
            // vanished early may never have reached `accept`.
            assert!(
                connections["accepted"].as_u64().unwrap() >= 51,
                "{connections}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections never drained: {connections}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(echo(&mut server.connect(), b"still fine"), [b"still fine"]);
}
