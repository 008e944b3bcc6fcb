//! The default hotsock handler: the textbook thread server's echo.
//!
//! For each chunk a client sends (up to 1024 bytes), reply
//! `Echo=>{chunk} at {time}`, until the client closes. The chunk is echoed as
//! the bytes it was, UTF-8 or not; only a line ending at its end moves to the
//! end of the reply, so `nc` users type `hello` and read
//! `Echo=>hello at Mon Nov 23 04:12:00 2026` on a line of its own. The time is
//! UTC, formatted like Python's `time.ctime()`: a handler has no time zone
//! database to find local time in. The reply is built by the workspace's
//! `ctime` crate, which `handlers/slow-echo` and the bench's native server
//! share.

wit_bindgen::generate!({ path: "../wit", world: "plugin", generate_all });

use std::time::SystemTime;

use ctime::echo_reply;
use exports::hotsock::plugin::handler::Guest;
use hotsock::plugin::types::Connection;

struct Echo;

impl Guest for Echo {
    fn handle(conn: &Connection) -> Result<(), String> {
        // End of stream, a reset or the host's idle timeout: this client is done.
        while let Ok(chunk) = conn.read(1024) {
            if chunk.is_empty() {
                break;
            }
            if conn.write(&echo_reply(&chunk, SystemTime::now())).is_err() {
                break;
            }
        }
        Ok(())
    }
}

export!(Echo);
