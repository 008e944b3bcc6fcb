//! The log: to stderr, filtered by `RUST_LOG` (default `info`), as text for
//! people or as one JSON object per line for log shippers.
//!
//! A connection's lines carry its fields (`conn`, `peer`, `listener`,
//! `version`, and `stream` for guest output; see
//! [`hotsock::runtime::Fields`]): JSON shows them as fields, text as the
//! line's prefix, `conn 7 127.0.0.1:50275 v1-1d2e8999 stdout: ...`.

use std::collections::BTreeMap;
use std::io::Write as _;

use clap::ValueEnum;
use env_logger::fmt::Formatter;
use hotsock::server::DEFAULT_LISTENER;
use log::Record;
use log::kv::{Key, Value, VisitSource};
use serde_json::{Map, Value as Json};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `[2026-11-23T04:12:00.101Z INFO ] conn 7 ...: connected`
    #[default]
    Text,
    /// `{"timestamp": ..., "level": "INFO", "message": "connected", "conn": 7, ...}`
    Json,
}

/// Starts logging in `format`; only the first call in a process counts.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        LogFormat::Text => builder.format(text),
        LogFormat::Json => builder.format(json),
    };
    let _ = builder.try_init();
}

/// A record's key-value pairs, in order of their keys.
fn fields(record: &Record<'_>) -> BTreeMap<String, Json> {
    struct Collect(BTreeMap<String, Json>);
    impl<'kvs> VisitSource<'kvs> for Collect {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
            let value = match value.to_u64() {
                Some(n) => Json::from(n),
                None => Json::from(value.to_string()),
            };
            self.0.insert(key.to_string(), value);
            Ok(())
        }
    }
    let mut collect = Collect(BTreeMap::new());
    let _ = record.key_values().visit(&mut collect);
    collect.0
}

/// `[TIMESTAMP LEVEL] PREFIX: MESSAGE`, the prefix made of the fields.
fn text(buf: &mut Formatter, record: &Record<'_>) -> std::io::Result<()> {
    let fields = fields(record);
    let field = |key: &str| {
        fields.get(key).map(|v| match v {
            Json::String(text) => text.clone(),
            other => other.to_string(),
        })
    };
    let mut prefix = Vec::new();
    if let Some(conn) = field("conn") {
        prefix.push(format!("conn {conn}"));
        prefix.extend(field("peer"));
        prefix.extend(field("via").map(|balancer| format!("via {balancer}")));
        prefix.extend(field("listener").filter(|name| name != DEFAULT_LISTENER));
        prefix.extend(field("version"));
    }
    prefix.extend(field("checking").map(|name| format!("checking {name}")));
    prefix.extend(field("stream"));
    let level = record.level();
    let style = buf.default_level_style(level);
    write!(
        buf,
        "[{} {style}{level:<5}{style:#}] ",
        buf.timestamp_millis()
    )?;
    match prefix.is_empty() {
        true => writeln!(buf, "{}", record.args()),
        false => writeln!(buf, "{}: {}", prefix.join(" "), record.args()),
    }
}

/// One JSON object per line: `timestamp`, `level`, `message`, then the fields.
fn json(buf: &mut Formatter, record: &Record<'_>) -> std::io::Result<()> {
    let mut line = Map::new();
    line.insert(
        "timestamp".into(),
        buf.timestamp_millis().to_string().into(),
    );
    line.insert("level".into(), record.level().as_str().into());
    line.insert("message".into(), record.args().to_string().into());
    line.extend(fields(record));
    writeln!(buf, "{}", Json::Object(line))
}
