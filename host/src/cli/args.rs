//! What several subcommands share: the default address, the cache options,
//! and how grants are parsed.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use hotsock::runtime::{CACHE_DIR_ENV, Preopen, default_cache_dir};
use ipnet::IpNet;

/// Where `serve` listens, and `client` connects, unless told otherwise: the
/// textbook thread server's port, on loopback so that a fresh install exposes
/// nothing to the network.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50007";

/// Where compiled handler code is cached between runs.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Directory for compiled handler code, so a second start with the same
    /// handler skips compiling [default: $XDG_CACHE_HOME/hotsock, else ~/.cache/hotsock]
    #[arg(long, value_name = "DIR", env = CACHE_DIR_ENV, help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,

    /// Compile every handler afresh, without reading or writing the cache.
    #[arg(long, conflicts_with = "cache_dir", help_heading = "Cache")]
    pub no_cache: bool,
}

impl CacheArgs {
    /// Where the cache is unless told otherwise.
    pub fn default_dir() -> Option<PathBuf> {
        default_cache_dir()
    }

    /// The cache directory to use, if any.
    pub fn dir(&self) -> Option<PathBuf> {
        match self.no_cache {
            true => None,
            false => self.cache_dir.clone().or_else(default_cache_dir),
        }
    }
}

/// Parses `--env KEY=VALUE`.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// Parses `--keyvalue`: a bucket name, as a handler passes it to `open`.
pub fn parse_bucket_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic());
    match valid {
        true => Ok(text.to_string()),
        false => Err(format!(
            "`{}` cannot name a key-value bucket: use up to 128 visible ASCII characters",
            text.escape_debug()
        )),
    }
}

/// Parses `--proxy-from`: an address range (`10.0.0.0/8`, `fd00::/8`), or
/// one address. Host bits set under the prefix (`10.1.2.3/8`) are refused:
/// they are usually a typo for a narrower range.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = text.parse().map_err(|_| {
        format!("`{text}` is not an address range: give one like 10.0.0.0/8, fd00::/8 or 192.0.2.7")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "`{text}` has bits set past its prefix: did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

pub fn parse_read_only_dir(text: &str) -> Result<Preopen, String> {
    parse_dir(text, false)
}

pub fn parse_writable_dir(text: &str) -> Result<Preopen, String> {
    parse_dir(text, true)
}

/// Parses `HOST::GUEST`, or `HOST` alone for the same path on both sides.
pub fn parse_dir(text: &str, writable: bool) -> Result<Preopen, String> {
    let (host, guest) = text.split_once("::").unwrap_or((text, text));
    if host.is_empty() || guest.is_empty() {
        return Err(format!("`{text}` is not HOST::GUEST"));
    }
    Ok(Preopen {
        host: host.into(),
        guest: guest.to_string(),
        writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_or_say_what_is_expected() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        let dir = parse_dir("/srv/data::/data", true).unwrap();
        assert_eq!(
            (dir.host.to_str(), dir.guest.as_str()),
            (Some("/srv/data"), "/data")
        );
        assert!(parse_dir("::/data", false).is_err());
    }
}
