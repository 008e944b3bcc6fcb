//! `hotsock swap`, `status` and `rollback`: the admin API's client, and the
//! status table people read.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use hotsock::runtime::read_component;
use hotsock::server::admin::{SOURCE_HEADER, ServerStatus, TOKEN_ENV, Token};
use hotsock::server::http::{Client, Endpoint, Unreachable};
use hotsock::units::parse_duration;
use serde_json::Value;

/// The environment variable `swap`, `status` and `rollback` read the admin
/// address from when `--admin` is not given.
pub const ADMIN_ENV: &str = "HOTSOCK_ADMIN";

/// How long the client waits for an answer: a large component can take a
/// while to compile before the server replies.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where to find running servers' admin APIs, and their token.
#[derive(Debug, Args)]
#[command(after_help = "\
The token for an IP:PORT comes from --admin-token-file, else from the HOTSOCK_ADMIN_TOKEN variable.
With several --admin, the servers are taken one at a time, in order, stopping at the first that \
refuses: a rolling swap (or rollback) across a fleet.")]
pub struct AdminArgs {
    /// The Unix socket path or IP:PORT `hotsock serve --admin` listens on.
    /// Repeat it to act on several servers, one after the other.
    #[arg(long, value_name = "PATH|IP:PORT", env = ADMIN_ENV, required = true)]
    pub admin: Vec<Endpoint>,

    /// A file holding the admin API's token: the one `hotsock serve` was
    /// given. Needed for an IP:PORT unless HOTSOCK_ADMIN_TOKEN is set.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// The listener to act on, for a server with several (`[[listener]]`
    /// tables in its config); `status` shows every listener without it.
    #[arg(long, value_name = "NAME")]
    pub listener: Option<String>,
}

/// Options of `hotsock swap`.
#[derive(Debug, Args)]
pub struct SwapArgs {
    /// The server to talk to.
    #[command(flatten)]
    pub admin: AdminArgs,

    /// The new handler component (.wasm). The server validates and compiles it
    /// before swapping; if it is rejected, the current handler keeps serving.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,

    /// With several --admin: after each server's swap, wait this long, then
    /// check that it still serves the new version (no automatic rollback,
    /// --rollback-on-traps) before going on to the next (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub pause: Option<humantime::Duration>,
}

/// Options of `hotsock status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The server to talk to.
    #[command(flatten)]
    pub admin: AdminArgs,

    /// Print the raw JSON of `GET /status` instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `hotsock swap`: uploads the handler to each server in turn; says what
/// replaced what, and stops at the first server that refuses it.
pub fn swap(args: &SwapArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let component = read_component(&args.handler)?;
    let source = std::path::absolute(&args.handler)?.display().to_string();
    let targets = &args.admin.admin;
    let mut done = Vec::new();
    for (i, endpoint) in targets.iter().enumerate() {
        let client = AdminClient::new(&args.admin, endpoint)?;
        let answer = client.swap(&source, &component).map_err(|e| {
            stopped(
                e.context("swap rejected"),
                endpoint,
                &done,
                &targets[i + 1..],
            )
        })?;
        let field = |name: &str| answer[name].as_str().unwrap_or("?").to_string();
        let current = field("current");
        let prefix = label(targets, endpoint);
        match answer["swapped"].as_bool() {
            Some(true) => writeln!(out, "{prefix}swapped: {} -> {current}", field("replaced"))?,
            _ => writeln!(
                out,
                "{prefix}unchanged: {current} is already serving this component"
            )?,
        }
        if let Some(pause) = args.pause
            && i + 1 < targets.len()
        {
            std::thread::sleep(*pause);
            let now = client
                .status(args.admin.listener.as_deref())?
                .handlers
                .current;
            if now != current {
                let why = anyhow!(
                    "{endpoint} serves {now} again, not {current}, {pause} after the swap: it \
                     was rolled back (see its log)"
                );
                return Err(stopped(why, endpoint, &done, &targets[i + 1..]));
            }
        }
        done.push(endpoint.to_string());
    }
    Ok(())
}

/// `label: ` before a server's line when there are several.
fn label(targets: &[Endpoint], endpoint: &Endpoint) -> String {
    match targets.len() {
        1 => String::new(),
        _ => format!("{endpoint}: "),
    }
}

/// The error that stops a rolling operation at `at`, saying which servers
/// were done and which were left alone.
fn stopped(
    error: anyhow::Error,
    at: &Endpoint,
    done: &[String],
    left: &[Endpoint],
) -> anyhow::Error {
    if done.is_empty() && left.is_empty() {
        return error;
    }
    let left: Vec<String> = left.iter().map(Endpoint::to_string).collect();
    let done = match done.is_empty() {
        true => "none".to_string(),
        false => done.join(", "),
    };
    let left = match left.is_empty() {
        true => "none".to_string(),
        false => left.join(", "),
    };
    error.context(format!(
        "stopped at {at}: already done: {done}; not touched: {left}"
    ))
}

/// `hotsock status`: the table, or the raw JSON; every listener's unless
/// one was asked for; each server's in turn.
pub fn status(args: &StatusArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let targets = &args.admin.admin;
    for endpoint in targets {
        if targets.len() > 1 && !args.json {
            writeln!(out, "== {endpoint}")?;
        }
        let client = AdminClient::new(&args.admin, endpoint)?;
        let first = client.status(args.admin.listener.as_deref())?;
        let mut statuses = vec![first.clone()];
        if args.admin.listener.is_none() {
            for name in first.listeners.iter().skip(1) {
                statuses.push(client.status(Some(name))?);
            }
        }
        if !args.json {
            writeln!(out, "process: {}", first.pid)?;
        }
        for status in &statuses {
            match args.json {
                true => writeln!(out, "{}", serde_json::to_string_pretty(status)?)?,
                false if statuses.len() > 1 => write!(
                    out,
                    "listener {}: {}",
                    status.listener,
                    render_status(status)
                )?,
                false => write!(out, "{}", render_status(status))?,
            }
        }
    }
    Ok(())
}

/// `hotsock rollback`: each server in turn, stopping at the first that
/// cannot.
pub fn rollback(args: &AdminArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut done = Vec::new();
    for (i, endpoint) in args.admin.iter().enumerate() {
        let answer = AdminClient::new(args, endpoint)?.rollback().map_err(|e| {
            stopped(
                e.context("rollback refused"),
                endpoint,
                &done,
                &args.admin[i + 1..],
            )
        })?;
        writeln!(
            out,
            "{}rolled back: {} -> {}",
            label(&args.admin, endpoint),
            answer["replaced"].as_str().unwrap_or("?"),
            answer["current"].as_str().unwrap_or("?")
        )?;
        done.push(endpoint.to_string());
    }
    Ok(())
}

/// A client of one server's admin API.
struct AdminClient {
    endpoint: Endpoint,
    /// `?listener=NAME`, or nothing.
    query: String,
    client: Client,
    /// `Bearer <token>`, if there is a token.
    authorization: Option<String>,
}

impl AdminClient {
    /// A client for `endpoint`, one of `args`'s; an IP:PORT without a
    /// token is an error, since the server would refuse every request.
    fn new(args: &AdminArgs, endpoint: &Endpoint) -> Result<Self> {
        let token = match &args.admin_token_file {
            Some(path) => Some(Token::read(path)?),
            None => match std::env::var(TOKEN_ENV) {
                Ok(text) => {
                    Some(Token::new(text.trim()).map_err(|why| anyhow!("{TOKEN_ENV} {why}"))?)
                }
                Err(_) => None,
            },
        };
        if let (Endpoint::Tcp(addr), None) = (endpoint, &token) {
            bail!(
                "the admin API at {addr} needs its token: pass --admin-token-file FILE (the file \
                 `hotsock serve --admin-token-file` was given), or set {TOKEN_ENV}"
            );
        }
        Ok(AdminClient {
            endpoint: endpoint.clone(),
            query: listener_query(args.listener.as_deref()),
            client: Client::new(endpoint.clone(), CLIENT_TIMEOUT),
            authorization: token.map(|t| format!("Bearer {}", t.expose())),
        })
    }

    /// `GET /status`, of `listener` if given.
    fn status(&self, listener: Option<&str>) -> Result<ServerStatus> {
        let path = format!("/status{}", listener_query(listener));
        let body = self.call("GET", &path, &[], b"")?;
        serde_json::from_value(body)
            .context("the server's /status answer is not what this hotsock expects")
    }

    /// `POST /handler`: the server's answer, `{"swapped", "current", "replaced"}`.
    fn swap(&self, source: &str, component: &[u8]) -> Result<Value> {
        let source = source.replace(['\r', '\n'], " ");
        let headers = [
            ("content-type", "application/wasm"),
            (SOURCE_HEADER, source.as_str()),
        ];
        self.call(
            "POST",
            &format!("/handler{}", self.query),
            &headers,
            component,
        )
    }

    /// `POST /rollback`: the server's answer, `{"current", "replaced"}`.
    fn rollback(&self) -> Result<Value> {
        self.call("POST", &format!("/rollback{}", self.query), &[], b"")
    }

    /// One request; a 4xx or 5xx answer becomes an error with the server's message.
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Value> {
        let addr = &self.endpoint;
        let mut headers = headers.to_vec();
        if let Some(authorization) = &self.authorization {
            headers.push(("authorization", authorization));
        }
        let response = self
            .client
            .request(method, path, &headers, body)
            .map_err(|e| match e.downcast_ref::<Unreachable>() {
                Some(Unreachable(io)) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    anyhow!(
                        "cannot use the admin socket {addr} ({io}): it is private to the user \
                         running `hotsock serve`; run this as that user"
                    )
                }
                Some(Unreachable(io)) => anyhow!(
                    "cannot reach the admin API at {addr} ({io}): is `hotsock serve --admin {addr}` running?"
                ),
                None => e.context(format!("no answer from the admin API at {addr}")),
            })?;
        let body = response
            .json()
            .with_context(|| format!("{addr} did not answer like a hotsock admin API"))?;
        if response.status >= 400 {
            let message = body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_string);
            match body["reason"].as_str() {
                Some(reason) => bail!("{message} ({reason})"),
                None => bail!("{message}"),
            }
        }
        Ok(body)
    }
}

/// `?listener=NAME`, or nothing.
fn listener_query(listener: Option<&str>) -> String {
    listener.map_or_else(String::new, |name| format!("?listener={name}"))
}

/// `hotsock status` as a table, for people; `--json` gives the raw answer.
fn render_status(status: &ServerStatus) -> String {
    let c = &status.connections;
    let per_ip = c
        .max_per_ip
        .map_or_else(String::new, |n| format!(", at most {n} per address"));
    let refused_by = c
        .refused_by
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(why, n)| format!("{n} {why}"))
        .collect::<Vec<_>>();
    let refused_by = match refused_by.is_empty() {
        true => String::new(),
        false => format!(" ({})", refused_by.join(", ")),
    };
    let mut out = format!(
        "connections: {} open of {} max{per_ip}, {} accepted, {} refused{refused_by}, full {} time(s)\n",
        c.active, c.max, c.accepted, c.refused, c.saturated
    );
    let status = &status.handlers;
    out.push_str(&format!("current: {}\n", status.current));
    out.push_str(&format!(
        "{:<14} {:<9} {:<21} {:>7} {:>8} {:>6}  SOURCE\n",
        "VERSION", "STATE", "LOADED AT", "ACTIVE", "SERVED", "TRAPS"
    ));
    for v in &status.versions {
        out.push_str(&format!(
            "{:<14} {:<9} {:<21} {:>7} {:>8} {:>6}  {}\n",
            v.id,
            v.state,
            v.loaded_at,
            v.active_connections,
            v.connections_served,
            v.traps,
            v.source
        ));
    }
    for r in &status.rollbacks {
        out.push_str(&format!(
            "rolled back {} -> {} at {}: {}\n",
            r.from, r.to, r.at, r.reason
        ));
    }
    out
}
