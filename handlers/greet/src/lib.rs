//! The classic interactive-client server: each message a client sends is
//! printed as `Hello {MESSAGE}`, upper-cased, and acknowledged with `-`, until
//! the client sends `--quit--` (in any case), which is printed too and closes
//! the connection without a reply.
//!
//! The printing is the point: hotsock forwards a handler's stdout to its log,
//! labelled with the connection, so the operator watches the conversation
//! there. `tests/clients/greet_client.py` is the matching interactive client.

wit_bindgen::generate!({ path: "../../wit", world: "plugin", generate_all });

use exports::hotsock::plugin::handler::Guest;
use hotsock::plugin::types::Connection;

/// The most one read takes. A longer message arrives as several, each
/// greeted on its own.
const BUFFER: usize = 5120;

struct Greet;

impl Guest for Greet {
    fn handle(conn: &Connection) -> Result<(), String> {
        // End of stream, a reset or the host's idle timeout: this client is done.
        while let Ok(message) = conn.read(BUFFER as u32) {
            if message.is_empty() {
                break;
            }
            if message.len() == BUFFER {
                // Said in the log, so a long message is seen to be split
                // rather than silently cut short.
                eprintln!(
                    "a message filled the whole {BUFFER}-byte buffer; \
                     if it was longer, the rest follows as further messages"
                );
            }
            let text = String::from_utf8_lossy(&message);
            println!("Hello {}", text.trim_end().to_uppercase());
            // Matched on the bytes, in ASCII only, so no Unicode case
            // mapping can make `--quit--` out of something else.
            let lower = message.to_ascii_lowercase();
            if lower.windows(8).any(|w| w == b"--quit--") {
                // Asked to go: no reply, as in the classic server, whose
                // client sends `--quit--` and closes without reading one.
                break;
            }
            // Gone: returning lets hotsock close the connection.
            if conn.write(b"-").is_err() {
                break;
            }
        }
        Ok(())
    }
}

export!(Greet);
