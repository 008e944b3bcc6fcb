//! The textbook thread server, simulated blocking work included: for each
//! chunk a client sends (up to 1024 bytes), sleep `ECHO_DELAY` seconds, then
//! reply exactly like the default handler, `Echo=>{chunk} at {time}`.
//!
//! The sleep stands in for real work (a database, a slow disk). It holds up
//! only its own client: hotsock serves each connection on a thread of its own,
//! so five clients that arrive together are all answered after one delay, not
//! five. The operator sets the delay with `hotsock serve --env ECHO_DELAY=0.5`;
//! it is 5 seconds, the textbook's `time.sleep(5)`, when unset.

wit_bindgen::generate!({ path: "../../wit", world: "plugin", generate_all });

use std::time::{Duration, SystemTime};

use ctime::echo_reply;
use exports::hotsock::plugin::handler::Guest;
use hotsock::plugin::types::Connection;

/// The delay when `ECHO_DELAY` is unset or unusable: the textbook's.
const DEFAULT_DELAY: Duration = Duration::from_secs(5);

struct SlowEcho;

impl Guest for SlowEcho {
    fn handle(conn: &Connection) -> Result<(), String> {
        let delay = delay();
        // End of stream, a reset or the host's idle timeout: this client is done.
        while let Ok(chunk) = conn.read(1024) {
            if chunk.is_empty() {
                break;
            }
            // Sleeping is waiting, not computing, so the CPU budget allows it.
            std::thread::sleep(delay);
            if conn.write(&echo_reply(&chunk, SystemTime::now())).is_err() {
                break;
            }
        }
        Ok(())
    }
}

export!(SlowEcho);

/// `ECHO_DELAY`, in seconds, decimals allowed (`0.25`). A value that is not a
/// usable number of seconds is reported on stderr, which reaches the server
/// log, rather than ignored in silence; the default applies.
fn delay() -> Duration {
    // WASI environment variables are always UTF-8, so an error means unset.
    let Ok(value) = std::env::var("ECHO_DELAY") else {
        return DEFAULT_DELAY;
    };
    let seconds = value.trim().parse().ok();
    // Rejects negative, infinite and NaN seconds.
    match seconds.and_then(|s| Duration::try_from_secs_f64(s).ok()) {
        Some(delay) => delay,
        None => {
            eprintln!(
                "ECHO_DELAY={value:?} is not a number of seconds; using the default, {}s",
                DEFAULT_DELAY.as_secs()
            );
            DEFAULT_DELAY
        }
    }
}
