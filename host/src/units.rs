//! Sizes and durations as people write them on a command line (`64MiB`,
//! `500ms`) and read them in a log line (`64 MiB`, `500ms`).

use std::fmt;
use std::str::FromStr;

/// The binary units sizes are written in, largest first.
const UNITS: [(&str, usize); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];

/// A size in bytes that reads and prints as `64MiB`: what a size option holds,
/// so that `--help` shows its default the way a user would type it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub usize);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_size(text).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match largest_exact_unit(self.0) {
            Some((n, unit)) => write!(f, "{n}{unit}"),
            None => write!(f, "{}", self.0),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Size {
    /// `"64MiB"` as on the command line, or a number of bytes.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(usize),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(n) => Ok(Size(n)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration that reads and prints as people write it (`500ms`, `10s`,
/// `2m`): what a duration option holds, on the command line and in a
/// config file alike, so that `--help` shows its default as it is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub std::time::Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_duration(text).map(|d| Span(d.into()))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::Duration::from(self.0).fmt(f)
    }
}

impl From<std::time::Duration> for Span {
    fn from(duration: std::time::Duration) -> Self {
        Span(duration)
    }
}

impl From<Span> for std::time::Duration {
    fn from(span: Span) -> Self {
        span.0
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    /// `"500ms"`, as on the command line.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `64 MiB`: a size for a log line or an error, in its largest exact unit.
pub fn format_size(bytes: usize) -> String {
    match largest_exact_unit(bytes) {
        Some((n, unit)) => format!("{n} {unit}"),
        None => format!("{bytes} bytes"),
    }
}

fn largest_exact_unit(bytes: usize) -> Option<(usize, &'static str)> {
    UNITS
        .into_iter()
        .find(|&(_, size)| bytes >= size && bytes.is_multiple_of(size))
        .map(|(unit, size)| (bytes / size, unit))
}

/// Parses `64MiB`, `512KiB`, `1GiB`, `1048576` (bytes); `K`, `M`, `G` and
/// `KB`, `MB`, `GB` are read as binary units too, as memory sizes usually are.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (expected e.g. 64MiB, 512KiB, 1GiB)"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown size unit in `{text}` (expected KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a human duration such as `10s`, `500ms` or `1m 30s`. The result
/// prints back the same way, so `--help` shows a default as it is typed.
pub fn parse_duration(text: &str) -> Result<humantime::Duration, String> {
    text.parse::<humantime::Duration>()
        .map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn sizes_print_in_their_largest_exact_unit() {
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(1536 << 10), "1536 KiB");
        assert_eq!(format_size(1000), "1000 bytes");
        assert_eq!(Size(64 << 20).to_string(), "64MiB");
        assert_eq!(Size(1000).to_string(), "1000");
    }

    #[test]
    fn a_size_and_a_duration_print_as_they_parse() {
        for text in ["64MiB", "1536KiB", "3GiB", "1000"] {
            assert_eq!(text.parse::<Size>().map(|s| s.to_string()), Ok(text.into()));
        }
        for text in ["10s", "500ms", "5m"] {
            assert_eq!(parse_duration(text).map(|d| d.to_string()), Ok(text.into()));
        }
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("expected e.g.")
        );
    }
}
