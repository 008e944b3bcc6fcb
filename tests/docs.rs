//! The docs run: README.md and every page of docs/ are read, and their fenced
//! code blocks are checked against the real binary, so that the docs cannot
//! drift from what hotsock does.
//!
//! What a block's info string (the words after the opening fence) means:
//!
//! - `console`: a shell session, run. `$ ` starts a command (a trailing `\`
//!   continues it on the next line); every other line is what it prints,
//!   where `...` stands for any text and a number for any number. Each
//!   command runs with `sh` in a scratch directory that looks like the
//!   repository's root (its top-level entries are linked in), with the
//!   `hotsock` under test first on `PATH`. It must exit 0, unless the first
//!   line shown starts with `error:` or `FAIL:`; each line shown must match a
//!   line it printed. `hotsock serve ...` (in the background with `&`, or
//!   the block's last command) starts a server that lives until the block
//!   ends, once it has announced its addresses: each address it is given
//!   (`--addr`, default `127.0.0.1:50007`; `--admin IP:PORT`; `--metrics`) is
//!   bound on 127.0.0.1:0 instead, and later commands of the block have the
//!   documented address rewritten to the real one. `cd DIR` moves the block.
//! - `console,norun`: shown, not run: it builds for minutes, needs HAProxy or
//!   systemd, or waits for a person to type. Its `hotsock` commands' flags
//!   are still checked, and at most half of all console blocks may be norun.
//! - `toml`: a config file for `hotsock serve --config`. It is written to a
//!   scratch directory with every `addr` and `metrics` address made
//!   127.0.0.1:0, every `handler` the built handler of the same file name,
//!   and every certificate file (`tls-cert`, `tls-key`, `tls-client-ca`, an
//!   SNI entry's `cert` and `key`) one made for the test, for the entry's
//!   `name`; `hotsock check --config` must accept it, and `hotsock serve
//!   --config` must announce every listener.
//! - `toml,fails`: a config both must refuse with an `error:`.
//! - `toml,cargo`: a `Cargo.toml` fragment; it must parse as TOML.
//! - anything else (`text`, `rust`, `python`, `json`, `yaml`) is not run.
//!
//! Beyond the blocks: every `--flag` the docs write in backticks, in a
//! command or in a `text` block must be in `hotsock SUBCOMMAND --help` (the
//! named subcommand's own when there is one), every `key = value` in backticks must be a config
//! key, every relative link must lead to a file (and an `#anchor` to a
//! heading), and the README must link every page of docs/.
//!
//! `DOCS_VERBOSE=1` prints what each command really printed, for writing
//! the lines a block shows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io::Read as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use testkit::http::Endpoint;
use testkit::{Launch, ServerProcess};

use crate::util::{START_TIMEOUT, Server, TestCa, hotsock, repo_root, system_tool, wasm};

/// Longest one documented command may run: the slowest is a rolling swap
/// with `--pause 1s` between two servers.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The address `hotsock serve` listens on without `--addr`.
const DEFAULT_ADDR: &str = "127.0.0.1:50007";

/// Commands the docs show in backticks whose `--flags` are their own, not
/// hotsock's.
const OTHER_PROGRAMS: &[&str] = &[
    "cargo",
    "componentize-js",
    "componentize-py",
    "curl",
    "jco",
    "kubectl",
    "make",
    "nc",
    "npm",
    "pip",
    "rustup",
    "sysctl",
    "systemctl",
    "ulimit",
    "valgrind",
];

/// Keys of a config file that are not `serve` options of the same name.
const CONFIG_ONLY_KEYS: &[&str] = &["name", "handler", "listener"];

/// One fenced code block of a page.
#[derive(Debug)]
struct Block {
    /// The page, relative to the repository's root.
    page: String,
    /// The line of its opening fence, from 1.
    line: usize,
    /// The language: the info string's first word.
    lang: String,
    /// The words after it: `norun`, `fails`, `cargo`.
    attrs: Vec<String>,
    body: String,
}

impl Block {
    fn has(&self, attr: &str) -> bool {
        self.attrs.iter().any(|a| a == attr)
    }

    fn at(&self) -> String {
        format!("{}:{}", self.page, self.line)
    }
}

/// README.md and every page of docs/, relative to the repository's root.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo_root().join("docs"))
        .expect("the repository has docs/")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn read(page: &str) -> String {
    std::fs::read_to_string(repo_root().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"))
}

/// Every fenced block of every page.
fn blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    for page in pages() {
        let text = read(&page);
        let mut open: Option<Block> = None;
        for (i, line) in text.lines().enumerate() {
            match (&mut open, line.strip_prefix("```")) {
                (None, Some(info)) => {
                    let mut words = info.split(',').map(|w| w.trim().to_string());
                    open = Some(Block {
                        page: page.clone(),
                        line: i + 1,
                        lang: words.next().unwrap_or_default(),
                        attrs: words.collect(),
                        body: String::new(),
                    });
                }
                (Some(_), Some("")) => blocks.push(open.take().unwrap()),
                (Some(block), _) => {
                    block.body.push_str(line);
                    block.body.push('\n');
                }
                (None, None) => {}
            }
        }
        assert!(open.is_none(), "{page}: a code block is never closed");
    }
    blocks
}

/// The lines of a page outside its code blocks, numbered from 1.
fn prose(page: &str) -> Vec<(usize, String)> {
    let mut inside = false;
    let mut lines = Vec::new();
    for (i, line) in read(page).lines().enumerate() {
        if line.starts_with("```") {
            inside = !inside;
        } else if !inside {
            lines.push((i + 1, line.to_string()));
        }
    }
    lines
}

/// One command of a console block and the lines shown after it.
#[derive(Debug)]
struct Step {
    command: String,
    output: Vec<String>,
}

fn steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = block.body.lines();
    while let Some(line) = lines.next() {
        if let Some(command) = line.strip_prefix("$ ") {
            let mut command = command.to_string();
            while command.ends_with('\\') {
                command.pop();
                let next = lines
                    .next()
                    .unwrap_or_else(|| panic!("{}: a `\\` ends the block", block.at()));
                command.push(' ');
                command.push_str(next.trim_start());
            }
            steps.push(Step {
                command,
                output: Vec::new(),
            });
        } else {
            let step = steps.last_mut().unwrap_or_else(|| {
                panic!("{}: {line:?} comes before any `$ ` command", block.at())
            });
            step.output.push(line.to_string());
        }
    }
    assert!(
        !steps.is_empty(),
        "{}: a console block without a `$ ` command",
        block.at()
    );
    steps
}

/// A command line split into words as `sh` would, near enough for reading
/// its flags: quotes group, an unquoted `#` starting a word ends the line.
fn words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    for c in command.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None if c == '#' && !in_word => break,
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The simple commands of a command line: split at `|`, `;`, `&&`, `||`,
/// `&`, without leading `VAR=value` assignments.
fn simple_commands(command: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    for word in words(command) {
        let (word, ends) = match word.strip_suffix(';') {
            Some(word) => (word.to_string(), true),
            None => (word, false),
        };
        if ["|", ";", "&&", "||", "&"].contains(&word.as_str()) {
            commands.push(Vec::new());
            continue;
        }
        let current = commands.last_mut().unwrap();
        let assignment = current.is_empty() && word.contains('=') && !word.starts_with('-');
        if !assignment && !word.is_empty() {
            current.push(word.trim_start_matches('(').to_string());
        }
        if ends {
            commands.push(Vec::new());
        }
    }
    commands.retain(|c| !c.is_empty());
    commands
}

/// Is this word the hotsock binary?
fn is_hotsock(word: &str) -> bool {
    word == "hotsock" || word.ends_with("/hotsock")
}

/// `hotsock`'s subcommands, each with the long options its `--help` lists.
fn help() -> BTreeMap<String, BTreeSet<String>> {
    let top = run_help(&[]);
    let subcommands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(
        subcommands.contains(&"serve".to_string()),
        "no subcommands in `hotsock --help`:\n{top}"
    );
    subcommands
        .into_iter()
        .map(|sub| {
            // The options it defines, not those its prose mentions.
            let help = run_help(&[&sub]);
            let options = help.lines().filter(|l| l.trim_start().starts_with('-'));
            let flags = long_flags(&options.collect::<Vec<_>>().join("\n"));
            (sub, flags)
        })
        .collect()
}

fn run_help(args: &[&str]) -> String {
    let output = hotsock().args(args).arg("--help").output().unwrap();
    assert!(output.status.success(), "hotsock {args:?} --help failed");
    String::from_utf8(output.stdout).unwrap()
}

/// Every `--long-option` written in `text`.
fn long_flags(text: &str) -> BTreeSet<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut flags = BTreeSet::new();
    for i in 0..chars.len().saturating_sub(2) {
        let starts = chars[i] == '-'
            && chars[i + 1] == '-'
            && chars[i + 2].is_ascii_lowercase()
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '-'));
        if starts {
            let name: String = chars[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || **c == '-')
                .collect();
            flags.insert(format!("--{}", name.trim_end_matches('-')));
        }
    }
    flags
}

/// The spans of a line written in backticks.
fn code_spans(line: &str) -> Vec<String> {
    line.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, span)| span.to_string())
        .collect()
}

#[test]
fn readme_is_short_and_leads_to_every_page() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines < 200,
        "README.md has {lines} lines: the rest belongs in docs/"
    );
    for (i, line) in readme.lines().enumerate() {
        let length = line.chars().count();
        assert!(
            length <= 200,
            "README.md:{}: {length} characters on one line",
            i + 1
        );
    }
    for page in pages().iter().skip(1) {
        assert!(
            readme.contains(&format!("]({page})")),
            "README.md does not link {page}"
        );
    }
}

#[test]
fn every_link_leads_somewhere() {
    let mut checked = 0;
    for page in pages() {
        let dir = repo_root().join(&page).parent().unwrap().to_path_buf();
        for (number, line) in prose(&page) {
            for link in line.split("](").skip(1) {
                let Some(target) = link.split(')').next() else {
                    continue;
                };
                if target.starts_with("http://") || target.starts_with("https://") {
                    continue;
                }
                let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                let file = match path {
                    "" => repo_root().join(&page),
                    path => dir.join(path),
                };
                assert!(
                    file.exists(),
                    "{page}:{number}: the link to {target} leads nowhere"
                );
                if !anchor.is_empty() {
                    let headings = anchors(&file);
                    assert!(
                        headings.contains(anchor),
                        "{page}:{number}: {} has no heading #{anchor}; it has {headings:?}",
                        file.display()
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
}

/// The anchors GitHub gives a page's headings.
fn anchors(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut inside = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            inside = !inside;
        } else if !inside && line.starts_with('#') {
            let title = line.trim_start_matches('#').trim().to_lowercase();
            let slug: String = title
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            anchors.insert(slug);
        }
    }
    anchors
}

#[test]
fn every_flag_and_config_key_the_docs_name_exists() {
    let help = help();
    let all: BTreeSet<String> = help.values().flatten().cloned().collect();
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut check = |at: &str, sub: Option<&str>, flags: BTreeSet<String>| {
        let known = match sub {
            Some(sub) => match help.get(sub) {
                Some(known) => known,
                None => return vec![format!("{at}: `hotsock {sub}` is no subcommand")],
            },
            None => &all,
        };
        checked += flags.len();
        let whose = sub.map_or("any subcommand".to_string(), |s| format!("`hotsock {s}`"));
        flags
            .into_iter()
            .filter(|flag| !known.contains(flag))
            .map(|flag| format!("{at}: {flag} is not an option of {whose}"))
            .collect::<Vec<_>>()
    };
    for block in blocks() {
        if block.lang == "text" {
            // Log lines and errors name options too: `(--idle-timeout)`.
            problems.extend(check(&block.at(), None, long_flags(&block.body)));
        }
        if block.lang != "console" {
            continue;
        }
        for step in steps(&block) {
            for command in simple_commands(&step.command) {
                if is_hotsock(&command[0]) {
                    let flags = command.iter().flat_map(|w| long_flags(w)).collect();
                    problems.extend(check(
                        &block.at(),
                        command.get(1).map(String::as_str),
                        flags,
                    ));
                }
            }
        }
    }
    let mut keys = 0;
    for page in pages() {
        for (number, line) in prose(&page) {
            let at = format!("{page}:{number}");
            for span in code_spans(&line) {
                let words: Vec<&str> = span.split_whitespace().collect();
                let Some(first) = words.first() else { continue };
                if OTHER_PROGRAMS.contains(first) {
                    continue;
                }
                if is_hotsock(first) && words.len() > 1 && !words[1].starts_with('-') {
                    // `hotsock swap|status|rollback` names three at once.
                    for sub in words[1].split('|').filter(|s| !s.starts_with('<')) {
                        problems.extend(check(&at, Some(sub), long_flags(&span)));
                    }
                    continue;
                }
                problems.extend(check(&at, None, long_flags(&span)));
                if let Some((key, _)) = span.split_once(" = ")
                    && key.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                {
                    keys += 1;
                    let option = help["serve"].contains(&format!("--{key}"));
                    if !option && !CONFIG_ONLY_KEYS.contains(&key) {
                        problems.push(format!("{at}: `{key}` is not a config key"));
                    }
                }
            }
        }
    }
    eprintln!("docs: {checked} options and {keys} config keys named in the docs checked");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked > 100, "only {checked} flags found in the docs");
    assert!(keys > 3, "only {keys} config keys found in the docs' prose");
}

/// A directory for one block that looks like the repository's root: every
/// top-level entry linked in (`target` being wherever this test's handlers
/// were built), and a `hotsock` for `PATH`.
struct Scratch {
    dir: tempfile::TempDir,
    path: OsString,
    _bin: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let target = wasm("guest_handler")
            .ancestors()
            .nth(3)
            .expect("handlers are built in TARGET/wasm32-wasip2/release")
            .to_path_buf();
        for entry in std::fs::read_dir(repo_root()).unwrap() {
            let name = entry.unwrap().file_name();
            if name != "target" && name != ".git" {
                std::os::unix::fs::symlink(repo_root().join(&name), dir.path().join(&name))
                    .unwrap();
            }
        }
        std::os::unix::fs::symlink(&target, dir.path().join("target")).unwrap();
        let bin = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hotsock"), bin.path().join("hotsock"))
            .unwrap();
        let mut path = OsString::from(bin.path());
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        Scratch {
            dir,
            path,
            _bin: bin,
        }
    }
}

/// What a finished command did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `command` with `sh` in `dir`, stdin closed; killed with everything it
/// started after [`COMMAND_TIMEOUT`].
fn sh(command: &str, dir: &Path, path: &OsString) -> Ran {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("HOTSOCK_ADMIN")
        .env_remove("HOTSOCK_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let collect = |mut pipe: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: signals the process group this test started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("`{command}` ran for more than {COMMAND_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    // Whatever it left running in the background goes too.
    // SAFETY: signals the process group this test started.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    Ran {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Does `line`, as printed, match `shown`, as the docs show it: `...` for
/// any text, a number for any number, runs of spaces as one?
fn shown_matches(shown: &str, line: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Part {
        Char(char),
        Any,
        Number,
    }
    fn squeeze(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
    fn fits(pattern: &[Part], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((Part::Any, rest)) => (0..=text.len()).any(|i| fits(rest, &text[i..])),
            Some((Part::Number, rest)) => {
                let digits = text.iter().take_while(|c| c.is_ascii_digit()).count();
                (1..=digits).any(|i| fits(rest, &text[i..]))
            }
            Some((Part::Char(c), rest)) => text.first() == Some(c) && fits(rest, &text[1..]),
        }
    }
    let shown = squeeze(shown).replace("...", "\u{0}");
    let mut pattern: Vec<Part> = Vec::new();
    for c in shown.chars() {
        let part = match c {
            '\u{0}' => Part::Any,
            c if c.is_ascii_digit() => Part::Number,
            c => Part::Char(c),
        };
        if !(part == Part::Number && pattern.last() == Some(&Part::Number)) {
            pattern.push(part);
        }
    }
    let text: Vec<char> = squeeze(line).chars().collect();
    fits(&pattern, &text)
}

/// The servers a console block started, and the real address of each
/// address the docs gave them.
#[derive(Default)]
struct Servers {
    running: Vec<ServerProcess>,
    real: HashMap<SocketAddr, SocketAddr>,
}

impl Servers {
    /// `command` with every documented address the block's servers were
    /// given replaced by the one they really have.
    fn rewrite(&self, command: &str) -> String {
        let mut command = command.to_string();
        for (doc, real) in &self.real {
            command = command.replace(&doc.to_string(), &real.to_string());
            // `nc IP PORT`, and Python's `("IP", PORT)`.
            let spaced = |a: &SocketAddr| format!("{} {}", a.ip(), a.port());
            command = command.replace(&spaced(doc), &spaced(real));
            let python = |a: &SocketAddr| format!("\"{}\", {}", a.ip(), a.port());
            command = command.replace(&python(doc), &python(real));
        }
        command
    }

    /// Starts `hotsock serve ARGS` in `dir` on loopback port 0 instead of the
    /// documented addresses, and waits until it is listening.
    fn start(&mut self, args: &[String], dir: &Path, at: &str) {
        let mut args = args.to_vec();
        if !args.iter().any(|a| a == "--addr" || a == "--config") {
            args.splice(0..0, ["--addr".to_string(), DEFAULT_ADDR.to_string()]);
        }
        let mut documented = Vec::new();
        for i in 1..args.len() {
            let option = args[i - 1].as_str();
            if !["--addr", "--admin", "--metrics"].contains(&option) {
                continue;
            }
            if let Ok(doc) = args[i].parse::<SocketAddr>() {
                documented.push((option.to_string(), doc));
                // A second process on the same port (`--reuse-port`) gets it.
                let real = self
                    .real
                    .get(&doc)
                    .map_or("127.0.0.1:0".to_string(), |a| a.to_string());
                args[i] = real;
            }
        }
        let listeners = documented.iter().filter(|(o, _)| o == "--addr").count();
        let mut command = hotsock();
        command
            .arg("serve")
            .args(&args)
            .current_dir(dir)
            .env("RUST_LOG", "info");
        let server = Launch::new(command)
            .name(format!("`hotsock serve` of {at}"))
            .listeners(listeners.max(1))
            .admin(args.iter().any(|a| a == "--admin"))
            .metrics(args.iter().any(|a| a == "--metrics"))
            .timeout(START_TIMEOUT)
            .start()
            .unwrap_or_else(|e| panic!("{at}: {e:#}"));
        let mut addrs = server.addrs().iter();
        for (option, doc) in documented {
            let real = match option.as_str() {
                "--addr" => *addrs.next().unwrap(),
                "--metrics" => server.metrics().unwrap(),
                _ => match server.admin() {
                    Some(Endpoint::Tcp(addr)) => *addr,
                    other => panic!("{at}: --admin {doc} is announced as {other:?}"),
                },
            };
            self.real.insert(doc, real);
        }
        self.running.push(server);
    }
}

/// Runs one console block; panics with where and why at the first command
/// that does not do what the block shows.
fn run_console(block: &Block) {
    let steps = steps(block);
    // curl and openssl come from Debian packages, like HAProxy for the
    // fleet tests.
    for tool in ["curl", "openssl"] {
        let used = steps.iter().any(|step| {
            simple_commands(&step.command)
                .iter()
                .any(|command| command[0] == tool)
        });
        if used && system_tool(tool, tool).is_none() {
            return;
        }
    }
    let scratch = Scratch::new();
    let mut dir = scratch.dir.path().to_path_buf();
    let mut servers = Servers::default();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{} (`{}`)", block.at(), step.command);
        let command = servers.rewrite(&step.command);
        let expect_failure = step
            .output
            .first()
            .is_some_and(|l| l.starts_with("error:") || l.starts_with("FAIL:"));
        let words = words(&command);
        if let [cd, to] = words.as_slice()
            && cd == "cd"
        {
            dir = dir.join(to);
            continue;
        }
        if words.len() > 1 && is_hotsock(&words[0]) && words[1] == "serve" && !expect_failure {
            let background = words.last().is_some_and(|w| w == "&");
            assert!(
                background || i + 1 == steps.len(),
                "{at}: a server in the foreground must be the block's last command; end it with `&`"
            );
            let args = &words[2..words.len() - usize::from(background)];
            servers.start(args, &dir, &at);
            assert!(
                step.output.is_empty(),
                "{at}: a server's output is not checked; show it in a text block"
            );
            continue;
        }
        let ran = sh(&command, &dir, &scratch.path);
        if std::env::var_os("DOCS_VERBOSE").is_some() {
            // For writing docs: what each command really printed.
            eprintln!("{at}\n{}{}", ran.stdout, ran.stderr);
        }
        let said = format!(
            "{at} exited with {:?}\n--- stdout\n{}--- stderr\n{}",
            ran.code, ran.stdout, ran.stderr
        );
        match expect_failure {
            true => assert!(ran.code.is_some_and(|c| c != 0), "{said}\nbut should fail"),
            false => assert_eq!(ran.code, Some(0), "{said}"),
        }
        let printed: Vec<&str> = ran.stdout.lines().chain(ran.stderr.lines()).collect();
        for shown in &step.output {
            assert!(
                printed.iter().any(|line| shown_matches(shown, line)),
                "{said}\nprinted no line like {shown:?}"
            );
        }
    }
}

#[test]
fn every_console_block_runs_as_shown() {
    let console: Vec<Block> = blocks()
        .into_iter()
        .filter(|b| b.lang == "console")
        .collect();
    for block in blocks() {
        assert!(
            !["sh", "bash", "shell", ""].contains(&block.lang.as_str()),
            "{}: a shell example is a `console` block with `$ ` prompts; other blocks name their language (`text` for output)",
            block.at()
        );
    }
    let (skipped, run): (Vec<&Block>, Vec<&Block>) = console.iter().partition(|b| b.has("norun"));
    eprintln!(
        "docs: running {} console blocks, skipping {} marked norun:",
        run.len(),
        skipped.len()
    );
    for block in &skipped {
        eprintln!(
            "  skipped {}: {}",
            block.at(),
            block.body.lines().next().unwrap_or("")
        );
    }
    assert!(
        skipped.len() * 2 <= console.len(),
        "{} of {} console blocks are marked norun: at most half may be",
        skipped.len(),
        console.len()
    );
    // Each block in a thread of its own: they share nothing but the machine.
    let results: Vec<(String, thread::Result<()>)> = thread::scope(|scope| {
        let running: Vec<_> = run
            .iter()
            .map(|&block| (block.at(), scope.spawn(move || run_console(block))))
            .collect();
        running
            .into_iter()
            .map(|(at, handle)| (at, handle.join()))
            .collect()
    });
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(at, result)| {
            let why = result.err()?;
            let why = why
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| why.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Some(format!("{at}: {why}"))
        })
        .collect();
    assert!(failed.is_empty(), "\n{}", failed.join("\n\n"));
}

/// A config block made servable here: addresses on 127.0.0.1:0, handlers the
/// ones built for the tests, certificate files made in `dir`; and how many
/// listeners it has.
fn servable(block: &Block, dir: &Path) -> (String, usize) {
    let mut out = String::new();
    let (mut addrs, mut tables) = (0, 0);
    let ca = TestCa::new();
    // The current table's `name`, and the key of the certificate made last,
    // for the `key` or `tls-key` after it.
    let (mut name, mut key_file, mut made) = (None, None, 0);
    for line in block.body.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let mut line = line.to_string();
        if line.trim() == "[[listener]]" {
            tables += 1;
        }
        if line.trim_start().starts_with('[') {
            name = None;
        }
        let value = line.split('"').nth(1).map(str::to_string);
        let replace = |line: &mut String, file: &Path| {
            let value = value.as_deref().expect("a file name in quotes");
            *line = line.replacen(
                &format!("\"{value}\""),
                &format!("{:?}", file.display().to_string()),
                1,
            );
        };
        match key {
            "name" => name = value.clone(),
            "tls-cert" | "cert" => {
                // A listener's `name` is not a server name; an SNI entry's is.
                let server = match key {
                    "cert" => name
                        .clone()
                        .expect("an SNI entry's `name` before its `cert`"),
                    _ => "localhost".to_string(),
                };
                made += 1;
                let cert = dir.join(format!("cert-{made}.pem"));
                let pair = dir.join(format!("key-{made}.pem"));
                ca.issue(&[&server], &cert, &pair);
                replace(&mut line, &cert);
                key_file = Some(pair);
            }
            "tls-key" | "key" => {
                let pair = key_file
                    .take()
                    .expect("a `key` or `tls-key` after its certificate");
                replace(&mut line, &pair);
            }
            "tls-client-ca" => {
                let file = dir.join("client-ca.pem");
                ca.write_ca(&file);
                replace(&mut line, &file);
            }
            _ => {}
        }
        if key == "addr" || key == "metrics" {
            let quoted: Vec<String> = line
                .split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            for value in quoted {
                if value.parse::<SocketAddr>().is_ok() {
                    line = line.replacen(&format!("\"{value}\""), "\"127.0.0.1:0\"", 1);
                    addrs += usize::from(key == "addr");
                }
            }
        }
        if key == "handler" {
            let path = line.split('"').nth(1).expect("handler = \"PATH\"");
            let name = Path::new(path)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            line = format!("handler = {:?}", wasm(&name).display().to_string());
        }
        out.push_str(&line);
        out.push('\n');
    }
    assert!(
        addrs >= tables,
        "{}: every [[listener]] of a config example names its addr, so the test can move it to a free port",
        block.at()
    );
    (out, addrs)
}

#[test]
fn every_config_block_serves_or_fails_as_marked() {
    let configs: Vec<Block> = blocks().into_iter().filter(|b| b.lang == "toml").collect();
    let (mut served, mut refused, mut cargo) = (0, 0, 0);
    for block in &configs {
        let at = block.at();
        if block.has("cargo") {
            toml::from_str::<toml::Table>(&block.body)
                .unwrap_or_else(|e| panic!("{at}: not TOML: {e}"));
            cargo += 1;
            continue;
        }
        let scratch = tempfile::tempdir().unwrap();
        let (config, listeners) = servable(block, scratch.path());
        let file = scratch.path().join("hotsock.toml");
        std::fs::write(&file, &config).unwrap();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let hotsock = env!("CARGO_BIN_EXE_hotsock");
        let check = sh(
            &format!("{hotsock} check --config hotsock.toml"),
            scratch.path(),
            &path,
        );
        let said = format!(
            "{at}: `hotsock check --config` exited with {:?}:\n{}{}\nthe config as run:\n{config}",
            check.code, check.stdout, check.stderr
        );
        if block.has("fails") {
            assert!(
                check.code.is_some_and(|c| c != 0),
                "{said}\nbut is marked `fails`"
            );
            assert!(check.stderr.starts_with("error:"), "{said}");
            let serve = sh(
                &format!("{hotsock} serve --config hotsock.toml"),
                scratch.path(),
                &path,
            );
            assert!(
                serve.code.is_some_and(|c| c != 0) && serve.stderr.contains("error:"),
                "{at}: `hotsock serve --config` of a config marked `fails` exited with {:?}:\n{}",
                serve.code,
                serve.stderr
            );
            refused += 1;
            continue;
        }
        assert_eq!(check.code, Some(0), "{said}");
        let extra: &[&str] = match listeners {
            0 => &["--addr", "127.0.0.1:0"],
            _ => &[],
        };
        let server = Server::start_config(&file, listeners.max(1), extra);
        assert_eq!(server.addrs.len(), listeners.max(1), "{at}");
        served += 1;
    }
    eprintln!(
        "docs: {served} config blocks served, {refused} refused as marked, {cargo} Cargo.toml fragments parsed"
    );
    assert!(served > 0, "no config example was served");
}
