//! `hotsock dev`: a handler author's loop, like `spin watch` but without a
//! restart. It builds the project in DIR with the project's own build
//! command, serves the build on loopback, and whenever a source file is
//! saved, builds again and swaps the new build in: open connections finish
//! on the version they started with, new ones get the new one. A build that
//! fails, or a component the server refuses, is shown in the terminal, and
//! the last good build keeps serving.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use hotsock::runtime::{ConnectGrant, HandlerError};
use hotsock::server::{Control, Reloader, Server, Takeover, WATCH_QUIET};
use log::{info, warn};

use crate::cli::args::{CacheArgs, DEFAULT_ADDR, parse_bucket_name, parse_env};
use crate::cli::config::Plan;
use crate::cli::new::COMPONENTIZE_PY_VERSION;
use crate::cli::options::ServeOptions;
use crate::cli::signals;

/// Options of `hotsock dev`.
#[derive(Debug, Args)]
#[command(after_help = "\
DIR is a project made by `hotsock new` (or laid out like one): Cargo.toml (Rust, `cargo build
--release`), package.json (JavaScript or TypeScript, `npm run build`, after `npm install` if
node_modules is missing) or app.py (Python, componentize-py). Source files are checked for changes
four times a second; target/, node_modules/, build outputs and lock files are not watched.
Ctrl-C stops building and serving.")]
pub struct DevArgs {
    /// The handler project to build, serve and watch.
    #[arg(value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    /// Address to listen on; port 0 picks a free port. Repeatable.
    #[arg(long = "addr", value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub addrs: Vec<String>,

    /// Record every connection to a transcript in DIR, for `hotsock test`
    /// to replay: keep what you tried as tests.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,

    /// Let the handler open the key-value bucket NAME. Repeatable.
    #[arg(long = "keyvalue", value_name = "NAME", value_parser = parse_bucket_name)]
    pub keyvalue: Vec<String>,

    /// Let the handler open TCP connections to HOST:PORT. Repeatable.
    #[arg(long = "allow-connect", value_name = "HOST:PORT")]
    pub allow_connect: Vec<ConnectGrant>,

    /// Give the handler an environment variable, as KEY=VALUE. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Any other `serve` setting, from a config file without [[listener]]
    /// tables (the options here win over it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// How often the sources are looked at.
const POLL: Duration = Duration::from_millis(250);

/// Builds, then serves and rebuilds on every change until Ctrl-C.
pub fn run(args: DevArgs) -> Result<()> {
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("cannot find {}", args.dir.display()))?;
    let project = Project::find(&dir)?;
    info!(
        "dev: {} project {} builds with `{}` to {}",
        project.language,
        dir.display(),
        project.describe(),
        project.output.display()
    );
    let given = ServeOptions {
        handler: Some(project.output.clone()),
        addrs: Some(args.addrs),
        record: args.record,
        keyvalue: (!args.keyvalue.is_empty()).then_some(args.keyvalue),
        allow_connect: (!args.allow_connect.is_empty()).then_some(args.allow_connect),
        env: (!args.env.is_empty()).then_some(args.env),
        ..ServeOptions::default()
    };
    // Nothing to serve until a build succeeds and hotsock accepts what it
    // built (no import it does not provide, a `handle` to call): both are
    // fixed in the sources, so keep trying on every save.
    let mut seen = Sources::scan(&dir);
    let mut built = project.build();
    let server = loop {
        if !built {
            warn!("dev: fix the error above and save; nothing is served until then");
            seen = seen.next_change(&dir);
            built = project.build();
            continue;
        }
        let plan = Plan::new(args.config.as_deref(), &given, CacheArgs::default_dir())?;
        match Server::start(plan.config, Takeover::none()) {
            Ok(server) => break server,
            Err(e) if e.downcast_ref::<HandlerError>().is_some() => {
                warn!("dev: {e:#}");
                built = false;
            }
            Err(e) => return Err(e),
        }
    };
    let control = server.control();
    let on_signal = Arc::clone(&control);
    let reloader = Reloader::spawn(move || on_signal.reload("SIGHUP"), |_| {})?;
    signals::handle(Arc::clone(&control), reloader)?;
    let mut stdout = std::io::stdout().lock();
    for line in server.announcements() {
        writeln!(stdout, "{line}")?;
    }
    stdout.flush()?;
    drop(stdout);
    thread::Builder::new()
        .name("dev".into())
        .spawn(move || rebuild_on_change(&dir, &project, seen, &control))
        .context("cannot start the thread that watches the sources")?;
    server.run()
}

/// Builds `project` after each change to its sources, and swaps every good
/// build into listener 0; forever, on its own thread.
fn rebuild_on_change(dir: &Path, project: &Project, mut seen: Sources, control: &Control) {
    loop {
        seen = seen.next_change(dir);
        if project.build() {
            // Compiling a component of megabytes (Python, JavaScript) takes
            // seconds: say so, rather than seem stuck.
            info!("dev: compiling and swapping in the new build");
            // Logs the swap, or why the new build was refused and which
            // version still serves.
            control.reload_handler(0, "dev");
        } else {
            warn!("dev: build failed (above); the last good build still serves");
        }
    }
}

/// A handler project, and how it builds.
struct Project {
    language: &'static str,
    dir: PathBuf,
    /// The build's steps, each a program and its arguments.
    steps: Vec<Vec<String>>,
    /// The component the build writes.
    output: PathBuf,
    /// What to install when a step's program is not found.
    install: String,
}

impl Project {
    /// Recognises the project in `dir` by its manifest.
    fn find(dir: &Path) -> Result<Self> {
        let args = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        if dir.join("package.json").is_file() {
            let manifest = dir.join("package.json");
            let text = fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", manifest.display()))?;
            let Some(name) = json["name"].as_str() else {
                bail!(
                    "{} has no \"name\": the build writes NAME.wasm",
                    manifest.display()
                );
            };
            if json["scripts"]["build"].as_str().is_none() {
                bail!(
                    "{} has no \"build\" script: `hotsock new NAME --lang js` shows one",
                    manifest.display()
                );
            }
            let mut steps = Vec::new();
            if !dir.join("node_modules").is_dir() {
                steps.push(args(&["npm", "install"]));
            }
            steps.push(args(&["npm", "run", "build"]));
            let language = match dir.join("app.ts").exists() || dir.join("src/app.ts").exists() {
                true => "TypeScript",
                false => "JavaScript",
            };
            return Ok(Project {
                language,
                dir: dir.to_path_buf(),
                steps,
                output: dir.join(format!("{name}.wasm")),
                install: "Node.js and npm (Debian: `apt-get install nodejs npm`)".into(),
            });
        }
        if dir.join("Cargo.toml").is_file() {
            let (name, target) = cargo_metadata(dir)?;
            return Ok(Project {
                language: "Rust",
                dir: dir.to_path_buf(),
                steps: vec![args(&["cargo", "build", "--release"])],
                output: target
                    .join("wasm32-wasip2/release")
                    .join(format!("{}.wasm", name.replace('-', "_"))),
                install: "Rust (https://rustup.rs), then `rustup target add wasm32-wasip2`".into(),
            });
        }
        if dir.join("app.py").is_file() {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .context("the project directory has no name")?
                .replace('-', "_");
            let output = format!("{name}.wasm");
            return Ok(Project {
                language: "Python",
                dir: dir.to_path_buf(),
                steps: vec![args(&[
                    "componentize-py",
                    "-d",
                    "wit",
                    "-w",
                    "plugin",
                    "componentize",
                    "app",
                    "-o",
                    &output,
                ])],
                output: dir.join(output),
                install: format!(
                    "componentize-py (`pip install componentize-py=={COMPONENTIZE_PY_VERSION}`)"
                ),
            });
        }
        bail!(
            "{} is not a handler project: it has no Cargo.toml, package.json or app.py (make one \
             with `hotsock new NAME --lang rust|python|js|ts`)",
            dir.display()
        )
    }

    /// The build's steps, as a shell would show them.
    fn describe(&self) -> String {
        let steps: Vec<String> = self.steps.iter().map(|s| s.join(" ")).collect();
        steps.join(" && ")
    }

    /// Runs the build, its output shown as it comes (on stderr, so that
    /// stdout keeps only the server's announcements); says whether it
    /// succeeded and wrote the component.
    fn build(&self) -> bool {
        let began = Instant::now();
        info!("dev: building: {}", self.describe());
        for step in &self.steps {
            let (program, args) = step.split_first().expect("a build step names a program");
            let stdout = match std::io::stderr().as_fd().try_clone_to_owned() {
                Ok(fd) => Stdio::from(fd),
                Err(_) => Stdio::inherit(),
            };
            let status = Command::new(program)
                .args(args)
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .stdout(stdout)
                .status();
            match status {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    warn!("dev: `{}` failed ({status})", step.join(" "));
                    return false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    warn!(
                        "dev: `{program}` is not installed: install {}",
                        self.install
                    );
                    return false;
                }
                Err(e) => {
                    warn!("dev: cannot run `{program}`: {e}");
                    return false;
                }
            }
        }
        if !self.output.is_file() {
            warn!(
                "dev: the build succeeded but wrote no {}: does the build still write it?",
                self.output.display()
            );
            return false;
        }
        info!("dev: built in {:.1}s", began.elapsed().as_secs_f64());
        true
    }
}

/// The package name and target directory of the cargo project in `dir`,
/// from `cargo metadata`: the target directory may be anywhere
/// (CARGO_TARGET_DIR, a workspace, a config file).
fn cargo_metadata(dir: &Path) -> Result<(String, PathBuf)> {
    let output = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run `cargo metadata`: install Rust (https://rustup.rs)")?;
    if !output.status.success() {
        bail!("`cargo metadata` failed in {}", dir.display());
    }
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("`cargo metadata` printed no JSON")?;
    let manifest = dir.join("Cargo.toml");
    let packages = json["packages"].as_array().cloned().unwrap_or_default();
    let package = packages
        .iter()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .or(packages.first())
        .with_context(|| format!("{} names no package", manifest.display()))?;
    let name = package["name"]
        .as_str()
        .context("`cargo metadata` names no package")?
        .to_string();
    let target = json["target_directory"]
        .as_str()
        .context("`cargo metadata` names no target directory")?;
    Ok((name, PathBuf::from(target)))
}

/// Each watched source file's modification time and length.
#[derive(PartialEq, Eq)]
struct Sources(BTreeMap<PathBuf, (SystemTime, u64)>);

/// Directories never watched: build outputs, dependencies, tools' state.
const UNWATCHED_DIRS: [&str; 7] = [
    "target",
    "node_modules",
    "__pycache__",
    "build",
    "dist",
    "generated",
    "out",
];

/// Files watched, by extension: sources, manifests and the contract.
const WATCHED_EXTENSIONS: [&str; 10] = [
    "rs", "toml", "py", "js", "mjs", "cjs", "ts", "mts", "json", "wit",
];

/// Files builds write that look like sources.
const UNWATCHED_FILES: [&str; 2] = ["Cargo.lock", "package-lock.json"];

impl Sources {
    /// The sources under `dir` now.
    fn scan(dir: &Path) -> Self {
        let mut files = BTreeMap::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    if !name.starts_with('.') && !UNWATCHED_DIRS.contains(&name.as_ref()) {
                        dirs.push(entry.path());
                    }
                    continue;
                }
                let path = entry.path();
                let watched = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| WATCHED_EXTENSIONS.contains(&e))
                    && !UNWATCHED_FILES.contains(&name.as_ref());
                if let (true, Ok(meta)) = (watched, entry.metadata()) {
                    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    files.insert(path, (modified, meta.len()));
                }
            }
        }
        Sources(files)
    }

    /// Waits until the sources under `dir` differ from these, then until
    /// they have been quiet for [`WATCH_QUIET`] (an editor or a `git
    /// checkout` writes several files), and returns them as they are then.
    /// A save during a build is seen by comparing with the sources from
    /// before it.
    fn next_change(self, dir: &Path) -> Self {
        let mut latest = loop {
            thread::sleep(POLL);
            let now = Sources::scan(dir);
            if now != self {
                break now;
            }
        };
        loop {
            thread::sleep(WATCH_QUIET);
            let now = Sources::scan(dir);
            if now == latest {
                return latest;
            }
            latest = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_outputs_and_dependencies_are_not_sources() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "src/lib.rs",
            "app.ts",
            "package.json",
            "wit/plugin.wit",
            "target/wasm32-wasip2/release/build/x.rs",
            "node_modules/x/index.js",
            "generated/types.ts",
            "package-lock.json",
            "handler.wasm",
            ".git/config.toml",
        ] {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "x").unwrap();
        }
        let watched: Vec<String> = Sources::scan(dir.path())
            .0
            .keys()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            watched,
            ["app.ts", "package.json", "src/lib.rs", "wit/plugin.wit"]
        );
    }

    #[test]
    fn a_directory_without_a_manifest_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let Err(e) = Project::find(dir.path()) else {
            panic!("an empty directory is a project");
        };
        assert!(e.to_string().contains("hotsock new NAME"), "{e}");
    }
}
