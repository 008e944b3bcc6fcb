//! The textbook echo server's reply, `Echo=>{chunk} at {time}`, and its time.
//!
//! Shared, not copied: `handlers/slow-echo` includes this file with
//! `#[path]`, so the default handler and its slow twin cannot drift apart,
//! and each stays one small crate with no library of helpers to depend on.

use std::time::{SystemTime, UNIX_EPOCH};

/// `Echo=>{chunk} at {time}`, with the chunk's bytes as they came, UTF-8 or
/// not. A line ending (`\n` or `\r\n`) at the end of the chunk moves to the
/// end of the reply, so line-oriented clients such as `nc` get a line back for
/// each line they type.
pub fn echo_reply(chunk: &[u8], now: SystemTime) -> Vec<u8> {
    let line = chunk
        .strip_suffix(b"\r\n")
        .or_else(|| chunk.strip_suffix(b"\n"));
    let (data, eol) = chunk.split_at(line.map_or(chunk.len(), <[u8]>::len));
    let mut reply = b"Echo=>".to_vec();
    reply.extend_from_slice(data);
    reply.extend_from_slice(format!(" at {}", ctime(now)).as_bytes());
    reply.extend_from_slice(eol);
    reply
}

/// `Mon Nov 23 04:12:00 2026`, in UTC: the format of Python's `time.ctime()`,
/// without local time, because a handler has no time zone database.
pub fn ctime(now: SystemTime) -> String {
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
    use super::{ctime, echo_reply};
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

    #[test]
    fn a_trailing_line_ending_moves_to_the_end_of_the_reply() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_407_120);
        for (chunk, reply) in [
            ("hello", "Echo=>hello at Mon Nov 23 04:12:00 2026"),
            ("hello\n", "Echo=>hello at Mon Nov 23 04:12:00 2026\n"),
            ("dos\r\n", "Echo=>dos at Mon Nov 23 04:12:00 2026\r\n"),
            // Only a line ending at the very end moves.
            ("a\nb", "Echo=>a\nb at Mon Nov 23 04:12:00 2026"),
        ] {
            assert_eq!(echo_reply(chunk.as_bytes(), now), reply.as_bytes());
        }
    }
}
