//! {{name}}: a hotsock handler. hotsock calls `handle` once per client
//! connection, in a fresh instance on that connection's own thread.

// Generates the Rust side of the contract in wit/plugin.wit: the `Guest`
// trait to implement, the `Connection` to talk to the client through, and
// what else the host offers (`generate_all` includes the `wasi:keyvalue`
// interfaces from wit/deps/):
// - `hotsock::plugin::rooms`: `join(conn, "lobby")`, then `publish(conn,
//   "lobby", b"hi\n")` reaches every other member; `members("lobby")`.
// - `wasi::keyvalue::store::open("NAME")` and `wasi::keyvalue::atomics`:
//   buckets shared by every connection, once the operator grants them with
//   `hotsock serve --keyvalue NAME`.
// - `std::net::TcpStream::connect("HOST:PORT")`: outbound connections, to the
//   destinations granted with `--allow-connect HOST:PORT` only.
// The echo below uses none of them.
wit_bindgen::generate!({ path: "wit", world: "plugin", generate_all });

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
        // (`read_within(max, timeout_ms)` gives up with `TimedOut` instead.)
        while let Ok(message) = conn.read(4096) {
            if message.is_empty() {
                break;
            }
            // `write` blocks until all of it is sent.
            if conn.write(&reply(&message)).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// What the handler answers to `message`: the logic, apart from the
/// connection, so that `cargo test` can test it directly.
fn reply(message: &[u8]) -> Vec<u8> {
    message.to_vec()
}

export!(Handler);

// `cargo test` runs these in WebAssembly, through `hotsock run` (see
// .cargo/config.toml); `hotsock test` replays tests/echo.transcript against
// the built component, connection and all.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_echoes() {
        assert_eq!(reply(b"hello\n"), b"hello\n");
    }
}
