//! `hotsock dev`: builds a project, serves it, and on every saved edit
//! builds again and swaps the new build in; a build that fails leaves the
//! last good one serving, with the compiler's error in the terminal.

use std::io::{BufRead as _, BufReader, Lines};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use crate::util::{connect, echo_line, hotsock, repo_root, system_tool, wasm};

/// Upper bound on one build and swap: the first build of a scaffold
/// compiles wit-bindgen, on a busy two-core machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

/// A `hotsock dev` process, killed when dropped.
struct Dev {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
    stderr: tempfile::NamedTempFile,
}

impl Dev {
    /// Starts `hotsock dev` on `project` and waits until it serves.
    fn start(project: &Path, target: &Path, args: &[&str]) -> Self {
        let mut dev = Self::spawn(project, target, args);
        dev.served();
        dev
    }

    /// Starts `hotsock dev` on `project`, building into `target`.
    fn spawn(project: &Path, target: &Path, args: &[&str]) -> Self {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = hotsock()
            .args(["dev", "--addr", "127.0.0.1:0"])
            .args(args)
            .arg(project)
            .env("CARGO_TARGET_DIR", target)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Dev {
            child,
            stdout,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        }
    }

    /// Waits for the address it serves on: blocks until a build is served,
    /// which the test's own timeout bounds if the build hangs.
    fn served(&mut self) {
        loop {
            match self.stdout.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        self.addr = addr.parse().unwrap();
                        return;
                    }
                }
                _ => panic!("hotsock dev never served:\n{}", self.log()),
            }
        }
    }

    fn log(&self) -> String {
        read(self.stderr.path())
    }

    /// What a new connection answers to `line`.
    fn ask_new(&self, line: &str) -> String {
        echo_line(&mut connect(self.addr), line)
    }

    /// Waits until `done` holds, failing with the log after [`BUILD_TIMEOUT`].
    fn wait_for(&self, what: &str, done: impl Fn(&Dev) -> bool) {
        let began = Instant::now();
        while !done(self) {
            assert!(
                began.elapsed() < BUILD_TIMEOUT,
                "{what} did not happen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn an_edit_is_built_and_swapped_in_and_a_broken_one_leaves_the_last_good_build() {
    let parent = tempfile::tempdir().unwrap();
    let status = hotsock()
        .current_dir(parent.path())
        .args(["new", "dev-handler"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let project = parent.path().join("dev-handler");
    let lib = project.join("src/lib.rs");
    let record = parent.path().join("tried");
    // The scaffolds' shared target directory: wit-bindgen is built once.
    let dev = Dev::start(
        &project,
        &repo_root().join("target/scaffold-test"),
        &["--record", record.to_str().unwrap()],
    );

    let mut before = connect(dev.addr);
    assert_eq!(echo_line(&mut before, "one"), "one");
    let source = std::fs::read_to_string(&lib).unwrap();
    let edited = source.replace(
        "    message.to_vec()",
        "    [b\"v2 \".as_slice(), message].concat()",
    );
    assert_ne!(source, edited, "the template's reply() changed");
    std::fs::write(&lib, &edited).unwrap();
    dev.wait_for("the edit served", |dev| dev.ask_new("two") == "v2 two");
    // The connection opened before the edit keeps its version.
    assert_eq!(echo_line(&mut before, "three"), "three");

    // A syntax error: the compiler's message is shown, the last good build serves.
    std::fs::write(&lib, edited.replace(".concat()", ".concat(")).unwrap();
    dev.wait_for("the failed build reported", |dev| {
        dev.log().contains("the last good build still serves")
    });
    let log = dev.log();
    assert!(log.contains("error"), "{log}");
    assert!(log.contains("src/lib.rs"), "{log}");
    assert_eq!(dev.ask_new("four"), "v2 four");
    assert_eq!(echo_line(&mut before, "five"), "five");

    // What was tried is kept, for `hotsock test` to replay.
    drop(before);
    dev.wait_for("the transcripts written", |_| {
        std::fs::read_dir(&record).is_ok_and(|entries| entries.count() >= 3)
    });
}

#[test]
fn a_directory_that_is_not_a_project_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let output = hotsock()
        .arg("dev")
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a handler project") && stderr.contains("hotsock new NAME"),
        "{stderr}"
    );
}

/// A build that hotsock refuses (here a component with no handler export)
/// is shown like a failed one, and the next good build is served. The
/// project is a package.json whose build copies a ready component, so the
/// test needs npm and no compiler.
#[test]
fn a_build_hotsock_refuses_is_shown_and_the_next_good_one_served() {
    if system_tool("npm", "npm").is_none() {
        return; // said by system_tool: a skip outside CI, a failure under it
    }
    let parent = tempfile::tempdir().unwrap();
    let project = parent.path().join("copied");
    std::fs::create_dir_all(project.join("node_modules")).unwrap();
    let manifest = project.join("package.json");
    let package = |component: &Path| {
        let build = format!("cp {} copied.wasm", component.display());
        serde_json::json!({"name": "copied", "scripts": {"build": build}}).to_string()
    };
    std::fs::write(&manifest, package(&wasm("not-a-handler"))).unwrap();
    let mut dev = Dev::spawn(&project, parent.path(), &[]);
    dev.wait_for("the refusal shown", |dev| {
        dev.log().contains("nothing is served until then")
    });
    assert!(dev.log().contains("does not export"), "{}", dev.log());

    std::fs::write(&manifest, package(&wasm("guest_handler"))).unwrap();
    dev.served();
    assert!(dev.ask_new("hi").starts_with("Echo=>hi at "));
}
