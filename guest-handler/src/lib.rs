//! The default hotsock handler: the textbook thread server's echo.
//!
//! For each chunk a client sends (up to 1024 bytes), reply
//! `Echo=>{chunk} at {time}`, until the client closes. The chunk is echoed as
//! the bytes it was, UTF-8 or not; only a line ending at its end moves to the
//! end of the reply, so `nc` users type `hello` and read
//! `Echo=>hello at Mon Nov 23 04:12:00 2026` on a line of its own. The time is
//! UTC, formatted like Python's `time.ctime()`: a handler has no time zone
//! database to find local time in.

wit_bindgen::generate!({ path: "../wit", world: "plugin" });

use std::time::{SystemTime, UNIX_EPOCH};

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
            let line = chunk
                .strip_suffix(b"\r\n")
                .or_else(|| chunk.strip_suffix(b"\n"));
            let (data, eol) = chunk.split_at(line.map_or(chunk.len(), <[u8]>::len));
            let mut reply = b"Echo=>".to_vec();
            reply.extend_from_slice(data);
            reply.extend_from_slice(format!(" at {}", ctime(SystemTime::now())).as_bytes());
            reply.extend_from_slice(eol);
            if conn.write(&reply).is_err() {
                break;
            }
        }
        Ok(())
    }
}

export!(Echo);

/// `Mon Nov 23 04:12:00 2026`, in UTC.
fn ctime(now: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, time) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to (year, month, day).
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{} {} {day:2} {:02}:{:02}:{:02} {year}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[month as usize - 1],
        time / 3600,
        time / 60 % 60,
        time % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::ctime;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_like_python_ctime() {
        // Each expectation is `time.asctime(time.gmtime(secs))` from CPython.
        for (secs, expected) in [
            (0, "Thu Jan  1 00:00:00 1970"),
            (951_782_400, "Tue Feb 29 00:00:00 2000"),
            (1_795_407_120, "Mon Nov 23 04:12:00 2026"),
            (4_107_542_399, "Sun Feb 28 23:59:59 2100"),
            (4_107_542_400, "Mon Mar  1 00:00:00 2100"),
        ] {
            assert_eq!(ctime(UNIX_EPOCH + Duration::from_secs(secs)), expected);
        }
    }
}
