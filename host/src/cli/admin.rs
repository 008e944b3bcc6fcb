//! `hotsock swap`, `status` and `rollback`: the admin API's client, and the
//! status table people read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use hotsock::runtime::read_component;
use hotsock::server::admin::{SOURCE_HEADER, ServerStatus};
use serde_json::Value;

/// The environment variable `swap`, `status` and `rollback` read the admin
/// address from when `--admin` is not given.
pub const ADMIN_ENV: &str = "HOTSOCK_ADMIN";

/// How long the client waits for an answer: a large component can take a
/// while to compile before the server replies.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where to find a running server's admin API.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The address `hotsock serve --admin` listens on.
    #[arg(long, value_name = "ADDR", env = ADMIN_ENV)]
    pub admin: String,
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
    let answer = Client::new(&args.admin.admin)
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

/// `hotsock status`: the table, or the raw JSON.
pub fn status(args: &StatusArgs) -> Result<()> {
    let status = Client::new(&args.admin.admin).status()?;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&status)?),
        false => print!("{}", render_status(&status)),
    }
    Ok(())
}

/// `hotsock rollback`.
pub fn rollback(args: &AdminArgs) -> Result<()> {
    let answer = Client::new(&args.admin)
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
struct Client {
    addr: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the admin API at `addr` (as given to `serve --admin`).
    fn new(addr: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            // The admin API is on this machine or this network: a proxy from
            // the environment would only be in the way.
            .proxy(None)
            // Errors come as JSON with a 4xx status: read them, not just the code.
            .http_status_as_error(false)
            .timeout_global(Some(CLIENT_TIMEOUT))
            .build()
            .into();
        Client {
            addr: addr.to_string(),
            agent,
        }
    }

    /// `GET /status`.
    fn status(&self) -> Result<ServerStatus> {
        let body = self.call("GET", "/status", None)?;
        serde_json::from_value(body)
            .context("the server's /status answer is not what this hotsock expects")
    }

    /// `POST /handler`: the server's answer, `{"swapped", "current", "replaced"}`.
    fn swap(&self, source: &str, component: &[u8]) -> Result<Value> {
        self.call("POST", "/handler", Some((source, component)))
    }

    /// `POST /rollback`: the server's answer, `{"current", "replaced"}`.
    fn rollback(&self) -> Result<Value> {
        self.call("POST", "/rollback", None)
    }

    /// One request; a 4xx or 5xx answer becomes an error with the server's message.
    fn call(&self, method: &str, path: &str, upload: Option<(&str, &[u8])>) -> Result<Value> {
        let addr = &self.addr;
        // A bare IPv6 address needs its brackets back in a URL.
        let host = match addr.parse::<SocketAddr>() {
            Ok(socket) => socket.to_string(),
            Err(_) => addr.clone(),
        };
        let url = format!("http://{host}{path}");
        let sent = match (method, upload) {
            ("GET", _) => self.agent.get(&url).call(),
            (_, Some((source, body))) => self
                .agent
                .post(&url)
                .header(SOURCE_HEADER, source.replace(['\r', '\n'], " "))
                .send(body),
            _ => self.agent.post(&url).send_empty(),
        };
        let mut response = sent.map_err(|e| match e {
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                anyhow!("cannot reach the admin API at {addr}: is `hotsock serve --admin {addr}` running?")
            }
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                anyhow!("cannot reach the admin API at {addr} ({e}): is `hotsock serve --admin {addr}` running?")
            }
            e => anyhow!("no answer from the admin API at {addr}: {e}"),
        })?;
        let code = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("no answer from the admin API at {addr}"))?;
        let body: Value = serde_json::from_str(&text)
            .with_context(|| format!("{addr} did not answer like a hotsock admin API"))?;
        if code >= 400 {
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
