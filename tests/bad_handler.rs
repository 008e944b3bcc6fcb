//! A file that is not a usable handler stops `serve` and `check` with one
//! clear line and a non-zero exit, before anything listens.

use std::path::Path;

use crate::util::{hotsock, wasm};

/// Runs `serve` and `check` on `handler`; both must fail with one line that
/// contains `expected`.
fn rejects(handler: &Path, expected: &str) {
    rejects_with(
        handler,
        expected,
        &[&["serve", "--addr", "127.0.0.1:0"], &["check"]],
    );
}

/// [`rejects`] for a 12 MB JavaScript component, with `check` alone: `serve`
/// loads through the same code and says the same, and each run compiles the
/// whole component again (hotsock caches only what it accepts), for seconds.
fn check_rejects(handler: &Path, expected: &str) {
    rejects_with(handler, expected, &[&["check"]]);
}

fn rejects_with(handler: &Path, expected: &str, commands: &[&[&str]]) {
    for &args in commands {
        let output = hotsock()
            .args(args)
            .arg(handler)
            .output()
            .expect("hotsock runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{args:?} accepted {}",
            handler.display()
        );
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        );
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?} should explain in one line:\n{stderr}"
        );
        assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            lines[0].contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
}

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".wasm").tempfile().unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    file
}

#[test]
fn a_missing_file() {
    rejects(
        Path::new("/nonexistent/handler.wasm"),
        "cannot read handler",
    );
}

#[test]
fn a_file_that_is_not_wasm() {
    let file = file_with(b"#!/bin/sh\necho hello\n");
    rejects(file.path(), "is not a WebAssembly component");
}

#[test]
fn a_core_module_instead_of_a_component() {
    // The smallest valid core module: magic and version 1.
    let file = file_with(b"\0asm\x01\0\0\0");
    rejects(
        file.path(),
        "is a core WebAssembly module, not a component: build the handler with `cargo build --target wasm32-wasip2`",
    );
}

#[test]
fn a_truncated_component() {
    let file = file_with(b"\0asm\x0d\0\x01\0\x07");
    rejects(file.path(), "is not a valid component");
}

#[test]
fn a_component_of_another_world() {
    // A WASI command: it exports wasi:cli/run instead of the handler.
    rejects(
        &wasm("not-a-handler"),
        "does not export `hotsock:plugin/handler@0.3.0` (nor the older \
         `hotsock:plugin/handler@0.2.0`, `hotsock:plugin/handler@0.1.0`; it exports wasi:cli/run",
    );
}

#[test]
fn a_javascript_handler_built_with_wasi_http_is_told_how_to_build_it() {
    // handlers/js-echo built by componentize-js with its defaults, which
    // import wasi:http (the Makefile's js-fixtures).
    // The hint follows the linker's own words, and only for wasi:http.
    check_rejects(
        &wasm("js_wasi_http"),
        "and WASI 0.2 interfaces; a JavaScript handler built by componentize-js imports \
         wasi:http unless built with `-d http fetch-event`",
    );
}

#[test]
fn a_handler_exporting_a_bare_handle_is_told_which_export_hotsock_expects() {
    // `export function handle` in JavaScript, against a world that lets it.
    check_rejects(
        &wasm("js_no_handler"),
        "it exports handle): hotsock calls the function `handle` of the interface `handler` \
         (in JavaScript `export const handler = { handle(conn) { ... } }`",
    );
}

#[test]
fn check_accepts_the_default_handler() {
    let output = hotsock()
        .arg("check")
        .arg(wasm("guest_handler"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("is a hotsock handler"), "{stdout}");
    assert!(
        stdout.contains("contract: hotsock:plugin 0.3.0 "),
        "{stdout}"
    );
    assert!(stdout.contains("hotsock:plugin/types@0.3.0"), "{stdout}");
}

#[test]
fn check_names_an_earlier_contract_and_the_grants_a_handler_may_need() {
    // The probe is built against contract 0.1.0 on purpose, and uses files and sockets.
    let output = hotsock().arg("check").arg(wasm("probe")).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("contract: hotsock:plugin 0.1.0, an earlier contract: still served"),
        "{stdout}"
    );
    assert!(stdout.contains("may need: --allow-connect"), "{stdout}");
    // kit-0-2 is kit built against wit/0.2.0.
    let output = hotsock()
        .arg("check")
        .arg(wasm("kit_0_2"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "contract: hotsock:plugin 0.2.0, an earlier contract: still served \
             (exports hotsock:plugin/handler@0.2.0)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("may need: --keyvalue NAME"), "{stdout}");
}
