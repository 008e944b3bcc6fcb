//! {{name}}: a hotsock handler. hotsock calls `handle` once per client
//! connection, in a fresh instance on that connection's own thread.

// Generates the Rust side of the contract in wit/plugin.wit: the `Guest`
// trait to implement and the `Connection` to talk to the client through.
wit_bindgen::generate!({ path: "wit", world: "plugin" });

use exports::hotsock::plugin::handler::Guest;
use hotsock::plugin::types::Connection;

struct Handler;

impl Guest for Handler {
    /// Serves one client until it leaves; hotsock closes the connection when
    /// this returns. An `Err` is logged by hotsock with the connection's id.
    fn handle(conn: &Connection) -> Result<(), String> {
        // Guest stdout and stderr go to hotsock's log, labelled with the connection.
        println!("serving {}", conn.peer_addr());
        // `read` blocks until bytes arrive; an empty list means the client
        // closed, and an error that it is gone or has been idle too long.
        while let Ok(message) = conn.read(4096) {
            if message.is_empty() {
                break;
            }
            // `write` blocks until all of it is sent.
            if conn.write(&message).is_err() {
                break;
            }
        }
        Ok(())
    }
}

export!(Handler);
