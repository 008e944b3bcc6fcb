//! `hotsock new`: a project that builds to a component with one command and
//! is served, unchanged, by `hotsock serve`.

use std::path::Path;
use std::process::Command;

use crate::util::{Server, componentize_py, echo_line, error_of, hotsock, repo_root, system_tool};

fn scaffold(parent: &Path, name: &str, lang: &str) {
    let output = hotsock()
        .current_dir(parent)
        .args(["new", name, "--lang", lang])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("build it with"), "{stdout}");
    let readme = std::fs::read_to_string(parent.join(name).join("README.md")).unwrap();
    for topic in [
        "## Build",
        "## Test",
        "## Serve",
        "## Swap",
        "hotsock swap",
        "hotsock test",
    ] {
        assert!(
            readme.contains(topic),
            "the README lacks {topic:?}:\n{readme}"
        );
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_rust_handler_scaffolds_builds_and_serves() {
    let parent = tempfile::tempdir().unwrap();
    scaffold(parent.path(), "my-handler", "rust");
    let project = parent.path().join("my-handler");
    // The one build command from the README; a shared target directory keeps
    // wit-bindgen from being rebuilt on every test run.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = repo_root().join("target/scaffold-test");
    run(Command::new(cargo)
        .current_dir(&project)
        .args(["build", "--release"])
        .env("CARGO_TARGET_DIR", &target));
    let component = target.join("wasm32-wasip2/release/my_handler.wasm");
    // `cargo test` passes out of the box: its unit tests run in WebAssembly,
    // with `hotsock run` as cargo's runner (found on PATH, as a user has it).
    let hotsock_dir = repo_root().join("target/release");
    let path = std::env::join_paths(std::iter::once(hotsock_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .current_dir(&project)
        .arg("test")
        .env("CARGO_TARGET_DIR", &target)
        .env("PATH", path));
    // And its transcript replays against the component.
    run(hotsock()
        .current_dir(&project)
        .arg("test")
        .arg(&component)
        .arg("tests/echo.transcript"));

    let server = Server::start_path(&component, &[]);
    assert_eq!(echo_line(&mut server.connect(), "hello"), "hello");
    server.wait_for_log(&["stdout: serving 127.0.0.1:"]);
}

#[test]
fn a_python_handler_scaffolds_builds_and_serves() {
    let parent = tempfile::tempdir().unwrap();
    scaffold(parent.path(), "py-handler", "python");
    let project = parent.path().join("py-handler");
    run(Command::new(componentize_py()).current_dir(&project).args([
        "-d",
        "wit",
        "-w",
        "plugin",
        "componentize",
        "app",
        "-o",
        "py_handler.wasm",
    ]));

    // The one test command its README gives.
    run(hotsock()
        .current_dir(&project)
        .args(["test", "py_handler.wasm", "tests/echo.transcript"]));

    let server = Server::start_path(&project.join("py_handler.wasm"), &[]);
    assert_eq!(echo_line(&mut server.connect(), "hello"), "hello");
    server.wait_for_log(&["stdout: serving 127.0.0.1:"]);
}

/// npm in `project`, with a cache under the repository's target directory,
/// so that a rerun installs from it instead of the registry.
fn npm(npm: &Path, project: &Path) -> Command {
    let mut command = Command::new(npm);
    command
        .current_dir(project)
        .env("npm_config_cache", repo_root().join("target/npm-cache"))
        .env("npm_config_prefer_offline", "true")
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_update_notifier", "false");
    command
}

/// The commands a JavaScript or TypeScript scaffold's README gives: `npm
/// install`, `npm run build` (writing NAME.wasm) and `npm test` (`hotsock
/// test` on its transcript, with the hotsock under test on PATH); then the
/// component serves.
fn npm_builds_tests_and_serves(npm_path: &Path, project: &Path, name: &str) {
    run(npm(npm_path, project).arg("install"));
    run(npm(npm_path, project).args(["run", "build"]));
    let hotsock_dir = Path::new(env!("CARGO_BIN_EXE_hotsock")).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(hotsock_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    run(npm(npm_path, project).arg("test").env("PATH", path));

    let server = Server::start_path(&project.join(format!("{name}.wasm")), &[]);
    assert_eq!(echo_line(&mut server.connect(), "hello"), "hello");
    server.wait_for_log(&["stdout: serving 127.0.0.1:"]);
}

#[test]
fn a_js_handler_scaffolds_builds_and_serves() {
    let Some(npm_path) = system_tool("npm", "npm") else {
        return;
    };
    let parent = tempfile::tempdir().unwrap();
    scaffold(parent.path(), "js-handler", "js");
    npm_builds_tests_and_serves(&npm_path, &parent.path().join("js-handler"), "js-handler");
}

/// The TypeScript scaffold builds like the JavaScript one, and its build
/// type-checks `app.ts` against the contract: a type error stops it with
/// tsc's message.
#[test]
fn a_ts_handler_scaffolds_builds_and_serves_and_a_type_error_stops_its_build() {
    let Some(npm_path) = system_tool("npm", "npm") else {
        return;
    };
    let parent = tempfile::tempdir().unwrap();
    scaffold(parent.path(), "ts-handler", "ts");
    let project = parent.path().join("ts-handler");
    npm_builds_tests_and_serves(&npm_path, &project, "ts-handler");

    // `read` takes a number of bytes (`u32` in wit/plugin.wit).
    let app = project.join("app.ts");
    let source = std::fs::read_to_string(&app).unwrap();
    let broken = source.replace("conn.read(4096)", "conn.read(\"4096\")");
    assert_ne!(broken, source, "app.ts no longer calls conn.read(4096)");
    std::fs::write(&app, broken).unwrap();
    std::fs::remove_file(project.join("ts-handler.wasm")).unwrap();
    let output = npm(&npm_path, &project)
        .args(["run", "build"])
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "the build passed:\n{printed}");
    assert!(
        printed.contains("app.ts(") && printed.contains("error TS2345: Argument of type 'string' is not assignable to parameter of type 'number'"),
        "{printed}"
    );
    assert!(
        !project.join("ts-handler.wasm").exists(),
        "a component was built from code that does not type-check"
    );
}

#[test]
fn an_existing_directory_is_not_overwritten() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::create_dir(parent.path().join("taken")).unwrap();
    let stderr = error_of(hotsock().current_dir(parent.path()).args(["new", "taken"]));
    assert!(stderr.contains("already exists"), "{stderr}");
}
