//! The textbook echo server's reply, `Echo=>{chunk} at {time}`, and its time.
//!
//! A crate of its own so that the default handler (`guest-handler`), its slow
//! twin (`handlers/slow-echo`) and the bench's native server (`native-echo`)
//! send the very same bytes and cannot drift apart. It has no dependencies
//! and formats by hand: it runs for every message a handler answers.

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
    // One allocation of the right size: this runs for every message.
    let mut reply = Vec::with_capacity(chunk.len() + 34);
    reply.extend_from_slice(b"Echo=>");
    reply.extend_from_slice(data);
    reply.extend_from_slice(b" at ");
    reply.extend_from_slice(&ctime(now));
    reply.extend_from_slice(eol);
    reply
}

/// `Mon Nov 23 04:12:00 2026`, in UTC: the format of Python's `time.ctime()`,
/// without local time, because a handler has no time zone database. Filled
/// in digit by digit rather than through `format!`, which costs more than
/// the rest of a reply.
pub fn ctime(now: SystemTime) -> [u8; 24] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
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

    let mut out = *b"Www Mmm dd hh:mm:ss yyyy";
    out[0..3].copy_from_slice(DAYS[days.rem_euclid(7) as usize]);
    out[4..7].copy_from_slice(MONTHS[month as usize - 1]);
    digits(&mut out[8..10], day);
    if day < 10 {
        out[8] = b' '; // Python pads the day with a space, not a zero
    }
    digits(&mut out[11..13], time / 3600);
    digits(&mut out[14..16], time / 60 % 60);
    digits(&mut out[17..19], time % 60);
    digits(&mut out[20..24], year);
    out
}

/// Writes `value` in decimal, zero-padded, filling `out` exactly.
fn digits(out: &mut [u8], mut value: i64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
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
            assert_eq!(
                &ctime(UNIX_EPOCH + Duration::from_secs(secs)),
                expected.as_bytes()
            );
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
