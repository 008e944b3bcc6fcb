//! `hotsock swap`, `status` and `rollback`: the admin API's client, and the
//! status table people read.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use hotsock::runtime::read_component;
use hotsock::server::admin::{SOURCE_HEADER, ServerStatus, TOKEN_ENV, Token};
use hotsock::server::http::{Client, Endpoint, Unreachable};
use serde_json::Value;

/// The environment variable `swap`, `status` and `rollback` read the admin
/// address from when `--admin` is not given.
pub const ADMIN_ENV: &str = "HOTSOCK_ADMIN";

/// How long the client waits for an answer: a large component can take a
/// while to compile before the server replies.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where to find a running server's admin API, and its token.
#[derive(Debug, Args)]
#[command(after_help = "\
The token for an IP:PORT comes from --admin-token-file, else from the HOTSOCK_ADMIN_TOKEN variable.")]
pub struct AdminArgs {
    /// The Unix socket path or IP:PORT `hotsock serve --admin` listens on.
    #[arg(long, value_name = "PATH|IP:PORT", env = ADMIN_ENV)]
    pub admin: Endpoint,

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

/// `hotsock swap`: uploads the handler; says what replaced what.
pub fn swap(args: &SwapArgs) -> Result<()> {
    let component = read_component(&args.handler)?;
    let source = std::path::absolute(&args.handler)?.display().to_string();
    let answer = AdminClient::new(&args.admin)?
        .swap(&source, &component)
        .context("swap rejected")?;
    let field = |name: &str| answer[name].as_str().unwrap_or("?").to_string();
    match answer["swapped"].as_bool() {
        Some(true) => println!("swapped: {} -> {}", field("replaced"), field("current")),
        _ => println!(
            "unchanged: {} is already serving this component",
            field("current")
        ),
    }
    Ok(())
}

/// `hotsock status`: the table, or the raw JSON; every listener's unless
/// one was asked for.
pub fn status(args: &StatusArgs) -> Result<()> {
    let client = AdminClient::new(&args.admin)?;
    let first = client.status(args.admin.listener.as_deref())?;
    let mut statuses = vec![first.clone()];
    if args.admin.listener.is_none() {
        for name in first.listeners.iter().skip(1) {
            statuses.push(client.status(Some(name))?);
        }
    }
    for status in &statuses {
        match args.json {
            true => println!("{}", serde_json::to_string_pretty(status)?),
            false if statuses.len() > 1 => {
                print!("listener {}: {}", status.listener, render_status(status))
            }
            false => print!("{}", render_status(status)),
        }
    }
    Ok(())
}

/// `hotsock rollback`.
pub fn rollback(args: &AdminArgs) -> Result<()> {
    let answer = AdminClient::new(args)?
        .rollback()
        .context("rollback refused")?;
    println!(
        "rolled back: {} -> {}",
        answer["replaced"].as_str().unwrap_or("?"),
        answer["current"].as_str().unwrap_or("?")
    );
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
    /// A client for `args`; an IP:PORT without a token is an error, since
    /// the server would refuse every request.
    fn new(args: &AdminArgs) -> Result<Self> {
        let token = match &args.admin_token_file {
            Some(path) => Some(Token::read(path)?),
            None => match std::env::var(TOKEN_ENV) {
                Ok(text) => {
                    Some(Token::new(text.trim()).map_err(|why| anyhow!("{TOKEN_ENV} {why}"))?)
                }
                Err(_) => None,
            },
        };
        if let (Endpoint::Tcp(addr), None) = (&args.admin, &token) {
            bail!(
                "the admin API at {addr} needs its token: pass --admin-token-file FILE (the file \
                 `hotsock serve --admin-token-file` was given), or set {TOKEN_ENV}"
            );
        }
        Ok(AdminClient {
            endpoint: args.admin.clone(),
            query: listener_query(args.listener.as_deref()),
            client: Client::new(args.admin.clone(), CLIENT_TIMEOUT),
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
