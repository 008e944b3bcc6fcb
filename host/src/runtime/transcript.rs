//! Transcripts: one client connection written down, what `serve --record`
//! writes and `hotsock test` replays.
//!
//! A transcript is text, one entry per line, easy to read and to write by
//! hand:
//!
//! ```text
//! # anything after `#` on its own line is a comment
//! > hello\n                       the client sent these bytes
//! wall 1795476249.123456789        the handler read the wall clock (seconds since 1970)
//! < Echo=>hello at Mon Nov 23 ...\n   the handler wrote these bytes
//! mono 123456789                   it read the monotonic clock (nanoseconds)
//! random 8f3a00ff                  it drew these bytes from wasi:random
//! insecure 00ff                    ... from wasi:random/insecure
//! seed 000102030405060708090a0b0c0d0e0f   the value of wasi:random/insecure-seed
//! truncated                        the recording stopped here (--record-max-bytes)
//! ```
//!
//! Data after `> ` and `< ` is the bytes as they are, except `\\`, `\n`,
//! `\r`, `\t` and `\xHH` for any other byte outside printable ASCII; the
//! line's own end is not part of them. Clock and random entries are in the
//! order the handler asked, which is all a replay needs: each kind is fed
//! back in its own order.

use std::fmt::Write as _;
use std::time::Duration;

/// One line of a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Bytes the client sent, as one `read` returned them.
    Client(Vec<u8>),
    /// Bytes the handler wrote in one `write`.
    Handler(Vec<u8>),
    /// A wall clock reading, since the Unix epoch.
    Wall(Duration),
    /// A monotonic clock reading, in nanoseconds.
    Mono(u64),
    /// Bytes from `wasi:random/random`.
    Random(Vec<u8>),
    /// Bytes from `wasi:random/insecure`.
    Insecure(Vec<u8>),
    /// The value of `wasi:random/insecure-seed`.
    Seed(u128),
    /// The recording stopped here: what follows was not kept.
    Truncated,
}

/// A transcript: its entries in order, and its comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// Comment lines (without `# `), such as the header.
    pub comments: Vec<String>,
    /// The entries, in the order they happened.
    pub entries: Vec<Entry>,
}

impl Transcript {
    /// Reads a transcript; an error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut transcript = Transcript::default();
        for (n, line) in text.lines().enumerate() {
            let at = |why: String| format!("line {}: {why}", n + 1);
            let trimmed = line.trim_end_matches('\r');
            if let Some(comment) = trimmed.strip_prefix('#') {
                transcript.comments.push(comment.trim_start().to_string());
                continue;
            }
            if trimmed.trim().is_empty() {
                continue;
            }
            let (word, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
            let entry = match word {
                ">" => Entry::Client(unescape(rest).map_err(at)?),
                "<" => Entry::Handler(unescape(rest).map_err(at)?),
                "wall" => Entry::Wall(parse_wall(rest.trim()).map_err(at)?),
                "mono" => Entry::Mono(
                    rest.trim()
                        .parse()
                        .map_err(|_| at(format!("`{rest}` is not nanoseconds")))?,
                ),
                "random" => Entry::Random(parse_hex(rest.trim()).map_err(at)?),
                "insecure" => Entry::Insecure(parse_hex(rest.trim()).map_err(at)?),
                "seed" => Entry::Seed(
                    u128::from_str_radix(rest.trim(), 16)
                        .map_err(|_| at(format!("`{rest}` is not a 128-bit hex number")))?,
                ),
                "truncated" => Entry::Truncated,
                other => {
                    return Err(at(format!(
                        "`{other}` is not an entry: lines start with `>`, `<`, `wall`, `mono`, \
                         `random`, `insecure`, `seed`, `truncated` or `#`"
                    )));
                }
            };
            transcript.entries.push(entry);
        }
        Ok(transcript)
    }

    /// The transcript as text, which [`Transcript::parse`] reads back.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for comment in &self.comments {
            let _ = writeln!(text, "# {comment}");
        }
        for entry in &self.entries {
            let _ = match entry {
                Entry::Client(bytes) => writeln!(text, "> {}", escape(bytes)),
                Entry::Handler(bytes) => writeln!(text, "< {}", escape(bytes)),
                Entry::Wall(at) => writeln!(text, "wall {}.{:09}", at.as_secs(), at.subsec_nanos()),
                Entry::Mono(nanos) => writeln!(text, "mono {nanos}"),
                Entry::Random(bytes) => writeln!(text, "random {}", hex(bytes)),
                Entry::Insecure(bytes) => writeln!(text, "insecure {}", hex(bytes)),
                Entry::Seed(seed) => writeln!(text, "seed {seed:032x}"),
                Entry::Truncated => writeln!(text, "truncated"),
            };
        }
        text
    }

    /// The bytes the handler wrote, one element a write.
    pub fn replies(&self) -> Vec<&[u8]> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Handler(bytes) => Some(bytes.as_slice()),
                _ => None,
            })
            .collect()
    }

    /// Whether the recording was cut short.
    pub fn truncated(&self) -> bool {
        self.entries.contains(&Entry::Truncated)
    }
}

/// Bytes as a transcript line shows them.
pub fn escape(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => text.push_str("\\\\"),
            b'\n' => text.push_str("\\n"),
            b'\r' => text.push_str("\\r"),
            b'\t' => text.push_str("\\t"),
            0x20..=0x7e => text.push(b as char),
            _ => {
                let _ = write!(text, "\\x{b:02x}");
            }
        }
    }
    text
}

fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut chars = text.bytes();
    while let Some(b) = chars.next() {
        if b != b'\\' {
            bytes.push(b);
            continue;
        }
        match chars.next() {
            Some(b'\\') => bytes.push(b'\\'),
            Some(b'n') => bytes.push(b'\n'),
            Some(b'r') => bytes.push(b'\r'),
            Some(b't') => bytes.push(b'\t'),
            Some(b'x') => {
                let hi = chars.next();
                let lo = chars.next();
                let pair = [hi.unwrap_or(b'?'), lo.unwrap_or(b'?')];
                let byte = std::str::from_utf8(&pair)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "`\\x` takes two hex digits".to_string())?;
                bytes.push(byte);
            }
            other => {
                return Err(format!(
                    "`\\{}` is not an escape: use \\\\, \\n, \\r, \\t or \\xHH",
                    other.map_or(String::new(), |b| (b as char).to_string())
                ));
            }
        }
    }
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!(
            "`{text}` is not hex bytes: an odd number of digits"
        ));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .map_err(|_| format!("`{text}` is not hex bytes"))
        })
        .collect()
}

fn parse_wall(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not seconds since 1970, like 1795476249.123456789");
    let (secs, nanos) = text.split_once('.').unwrap_or((text, "0"));
    if nanos.is_empty() || nanos.len() > 9 || !nanos.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let nanos: u32 = format!("{nanos:0<9}").parse().map_err(|_| bad())?;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transcript_reads_back_what_it_wrote() {
        let transcript = Transcript {
            comments: vec!["conn 1".into()],
            entries: vec![
                Entry::Client(b"hi \\ \x00\xff\n".to_vec()),
                Entry::Wall(Duration::new(1_795_476_249, 123_456_789)),
                Entry::Mono(42),
                Entry::Random(vec![0x8f, 0x3a]),
                Entry::Insecure(vec![]),
                Entry::Seed(0x0102),
                Entry::Handler(b"Echo=>hi\r\n\t".to_vec()),
                Entry::Truncated,
            ],
        };
        let text = transcript.render();
        assert!(text.contains("> hi \\\\ \\x00\\xff\\n\n"), "{text}");
        assert_eq!(Transcript::parse(&text), Ok(transcript));
    }

    #[test]
    fn a_hand_written_transcript_reads_and_mistakes_are_named() {
        let t = Transcript::parse("# by hand\n\n> hello\\n\r\n< HELLO\\n\nwall 5\n").unwrap();
        assert_eq!(t.replies(), vec![b"HELLO\n".as_slice()]);
        assert_eq!(t.entries[2], Entry::Wall(Duration::from_secs(5)));
        let e = Transcript::parse("> ok\nsend x\n").unwrap_err();
        assert!(e.starts_with("line 2: `send` is not an entry"), "{e}");
        assert!(
            Transcript::parse("> \\q")
                .unwrap_err()
                .contains("not an escape")
        );
        assert!(Transcript::parse("random abc").is_err());
        assert!(Transcript::parse("wall 1.1234567890").is_err());
    }
}
