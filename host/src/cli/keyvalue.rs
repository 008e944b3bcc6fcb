//! `hotsock keyvalue`: read and mend key-value buckets without a handler,
//! in the store `serve` uses (the same `--state-dir`, `--keyvalue-store`
//! or `--config`), even while it serves: the SQLite store is shared.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Subcommand};
use hotsock::runtime::{Buckets, DEFAULT_MAX_BUCKET_BYTES, KeyValueStore};

use crate::cli::config::{Plan, keyvalue_store};
use crate::cli::options::ServeOptions;

/// Options of `hotsock keyvalue`.
#[derive(Debug, Args)]
#[command(after_help = "\
The store is found as `serve` finds it: --keyvalue-store, else keyvalue.sqlite3 in --state-dir,
else in $STATE_DIRECTORY, else in .hotsock; or as the config file given with --config says.
Writes are committed and synced before this exits, and a running server sees them at once.")]
pub struct KeyValueArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,

    /// The store: `sqlite:PATH`, `redis://HOST:PORT[/DB]` or
    /// `unix:///PATH/TO/redis.sock` (`memory:` holds nothing outside a server).
    #[arg(long, value_name = "URL", global = true, conflicts_with = "config")]
    pub keyvalue_store: Option<KeyValueStore>,

    /// The state directory whose store to use, as `serve --state-dir`.
    #[arg(long, value_name = "DIR", global = true, conflicts_with = "config")]
    pub state_dir: Option<PathBuf>,

    /// The store a `serve --config` file names (its `keyvalue-store` and
    /// `state-dir`, relative to the file).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

/// What `hotsock keyvalue` does to a bucket.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Print the bucket's keys, one a line, in order.
    List {
        /// The bucket, as handlers `open` it.
        bucket: String,
    },
    /// Print a key's value, as stored (a counter is decimal text).
    Get {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Set a key to VALUE, or to what standard input holds with `-`.
    Set {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The value, or `-` for standard input's bytes.
        value: String,
    },
    /// Remove a key; removing a missing one is not an error.
    Delete {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Add DELTA (default 1) to a counter, atomically with every server on
    /// the store, and print the sum.
    Increment {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What to add.
        #[arg(default_value_t = 1)]
        delta: u64,
    },
}

/// Runs one action on the store.
pub fn run(args: &KeyValueArgs) -> Result<()> {
    let (store, max_bytes) = match &args.config {
        Some(file) => {
            let plan = Plan::new(Some(file), &ServeOptions::default(), None)?;
            (plan.config.keyvalue_store, plan.config.keyvalue_max_bytes)
        }
        None => {
            let store = keyvalue_store(args.keyvalue_store.clone(), args.state_dir.clone());
            (store, DEFAULT_MAX_BUCKET_BYTES)
        }
    };
    match &store {
        KeyValueStore::Memory => bail!(
            "{store} holds nothing outside the server it belongs to: give a sqlite:PATH or Redis \
             store"
        ),
        KeyValueStore::Sqlite(path) if !path.is_file() => bail!(
            "there is no key-value store at {}: no server has used it yet (or give --state-dir, \
             --keyvalue-store or --config as serve was given them)",
            path.display()
        ),
        KeyValueStore::Sqlite(_) | KeyValueStore::Redis(_) => {}
    }
    let buckets = Buckets::new(max_bytes, store.clone());
    let kv = |e: hotsock::runtime::KvError| anyhow!("{}", e.0);
    let mut stdout = std::io::stdout().lock();
    match &args.action {
        Action::List { bucket } => {
            let bucket = buckets.open(bucket).map_err(kv)?;
            let mut cursor = None;
            loop {
                let page = bucket.list_keys(cursor).map_err(kv)?;
                for key in &page.keys {
                    writeln!(stdout, "{key}")?;
                }
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        Action::Get { bucket: name, key } => {
            let value = buckets.open(name).map_err(kv)?.get(key).map_err(kv)?;
            let value = value.with_context(|| format!("bucket `{name}` has no key `{key}`"))?;
            stdout.write_all(&value)?;
            if !value.ends_with(b"\n") {
                writeln!(stdout)?;
            }
        }
        Action::Set { bucket, key, value } => {
            let value = match value.as_str() {
                "-" => {
                    let mut bytes = Vec::new();
                    std::io::stdin().read_to_end(&mut bytes)?;
                    bytes
                }
                text => text.as_bytes().to_vec(),
            };
            buckets
                .open(bucket)
                .map_err(kv)?
                .set(key, &value)
                .map_err(kv)?;
        }
        Action::Delete { bucket, key } => {
            buckets.open(bucket).map_err(kv)?.delete(key).map_err(kv)?;
        }
        Action::Increment { bucket, key, delta } => {
            let sum = buckets
                .open(bucket)
                .map_err(kv)?
                .increment(key, *delta)
                .map_err(kv)?;
            writeln!(stdout, "{sum}")?;
        }
    }
    Ok(())
}
