//! The threaded socketserver example: each chunk a client sends (up to 1024
//! bytes) comes back prefixed with the name of whoever served it,
//! `conn-17: {chunk}`, until the client closes.
//!
//! Python's example names the server thread; here every connection has its
//! own instance as well as its own thread, so the connection id names both.
//! Two clients served at once always get different names.

wit_bindgen::generate!({ path: "../../wit", world: "plugin", generate_all });

use exports::hotsock::plugin::handler::Guest;
use hotsock::plugin::types::Connection;

struct WhoAmI;

impl Guest for WhoAmI {
    fn handle(conn: &Connection) -> Result<(), String> {
        let name = format!("conn-{}: ", conn.id());
        // End of stream, a reset or the host's idle timeout: this client is done.
        while let Ok(chunk) = conn.read(1024) {
            if chunk.is_empty() {
                break;
            }
            // The bytes as they came, line ending and all.
            if conn.write(&[name.as_bytes(), &chunk].concat()).is_err() {
                break;
            }
        }
        Ok(())
    }
}

export!(WhoAmI);
