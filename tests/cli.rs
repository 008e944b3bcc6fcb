//! The command line explains itself and fails clearly.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{error_of, hotsock, wasm};

fn help(subcommand: &str) -> String {
    let output = hotsock().args([subcommand, "--help"]).output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn serve_help_explains_every_option_with_its_default() {
    let help = help("serve");
    for expected in [
        "[HANDLER]",
        "--config <FILE>",
        "--addr <ADDR>",
        "[default: 127.0.0.1:50007]",
        "port 0",
        "--drain-timeout <DURATION>",
        "[default: 10s]",
        "SIGTERM",
    ] {
        assert!(
            help.contains(expected),
            "`serve --help` lacks {expected:?}:\n{help}"
        );
    }
}

#[test]
fn check_help_names_its_argument() {
    let help = help("check");
    assert!(
        help.contains("[HANDLER]") && help.contains("--config <FILE>"),
        "{help}"
    );
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = error_of(
        hotsock()
            .args(["serve", "--addr", &addr])
            .arg(wasm("guest_handler")),
    );
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("choose another --addr"), "{stderr}");
}

#[test]
fn a_malformed_duration_is_a_usage_error() {
    let output = hotsock()
        .args(["serve", "--drain-timeout", "soon"])
        .arg(wasm("guest_handler"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--drain-timeout"));
}

/// `check` and `compile` do a moment's work: once their answer is printed,
/// nothing (no timer thread, no pool) may keep the process alive.
#[test]
fn check_and_compile_exit_as_soon_as_their_answer_is_printed() {
    // Far above an exit's few milliseconds, far below the second the
    // server's timer threads once took to notice they should stop.
    const EXIT_WITHIN: Duration = Duration::from_millis(500);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("echo.cwasm");
    let handler = wasm("guest_handler");
    for args in [
        vec!["check".as_ref(), handler.as_os_str()],
        vec![
            "compile".as_ref(),
            handler.as_os_str(),
            "-o".as_ref(),
            output.as_os_str(),
        ],
    ] {
        let mut child = hotsock()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Kept open until the end: the rest of the answer still goes there.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let printed = Instant::now();
        let status = child.wait().unwrap();
        let exited = printed.elapsed();
        assert!(status.success(), "{args:?}: {first}");
        assert!(
            exited < EXIT_WITHIN,
            "{args:?} exited {exited:?} after printing {first:?}"
        );
    }
}
