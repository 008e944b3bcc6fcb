//! The command line explains itself and fails clearly.

use std::net::TcpListener;

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
        "<HANDLER>",
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
    assert!(help("check").contains("<HANDLER>"));
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
