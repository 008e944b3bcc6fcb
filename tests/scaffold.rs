//! `hotsock new`: a project that builds to a component with one command and
//! is served, unchanged, by `hotsock serve`.

use std::path::Path;
use std::process::Command;

use crate::util::{Server, componentize_py, echo_line, error_of, hotsock, repo_root};

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

#[test]
fn an_existing_directory_is_not_overwritten() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::create_dir(parent.path().join("taken")).unwrap();
    let stderr = error_of(hotsock().current_dir(parent.path()).args(["new", "taken"]));
    assert!(stderr.contains("already exists"), "{stderr}");
}
