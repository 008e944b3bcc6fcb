//! Record and replay: `serve --record DIR` writes each connection down, and
//! `hotsock test` replays transcripts against a handler, in process.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{Server, hotsock, reply, wasm};

/// `hotsock test HANDLER TRANSCRIPTS...`.
fn test(handler: &Path, transcripts: &[&Path], extra: &[&str]) -> Output {
    hotsock()
        .arg("test")
        .arg(handler)
        .args(transcripts)
        .args(extra)
        .output()
        .expect("hotsock test runs")
}

/// The transcripts in `dir`, once the server has written `n` of them.
fn transcripts(dir: &Path, n: usize) -> Vec<PathBuf> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "transcript"))
            .collect();
        if found.len() >= n {
            found.sort();
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} transcripts in {dir:?}",
            found.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_recording_of_the_echo_handler_replays_clean_and_another_handler_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("rec");
    let server = Server::start_with("guest_handler", &["--record", record.to_str().unwrap()]);
    let mut client = server.connect();
    for line in ["hello\n", "binary \x01\x7f\n"] {
        client.write_all(line.as_bytes()).unwrap();
        // The echo's reply holds the time: the replay must get the same time back.
        assert!(reply(&mut client).starts_with("Echo=>"));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    drop(client);
    let found = transcripts(&record, 1);
    let text = std::fs::read_to_string(&found[0]).unwrap();
    assert!(text.contains("> hello\\n\n"), "{text}");
    assert!(text.contains("> binary \\x01\\x7f\\n\n"), "{text}");
    assert!(text.contains("\nwall "), "{text}");

    let ok = test(&wasm("guest_handler"), &[&found[0]], &[]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("(2 replies)"), "{stdout}");

    let failed = test(&wasm("whoami"), &[&found[0]], &[]);
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("reply 1 of 2 differs"), "{stdout}");
    assert!(stdout.contains("  expected: \"Echo=>hello at "), "{stdout}");
    assert!(
        stdout.contains("  got:      \"conn-1: hello\\n\""),
        "{stdout}"
    );
}

#[test]
fn a_hand_written_transcript_replays_and_a_bad_one_is_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("by-hand.transcript");
    std::fs::write(
        &good,
        "# the echo at a fixed time: 2026-11-23 04:12:00 UTC\n\
         > hi\\n\n\
         wall 1795407120\n\
         < Echo=>hi at Mon Nov 23 04:12:00 2026\\n\n",
    )
    .unwrap();
    let ok = test(&wasm("guest_handler"), &[&good], &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    let bad = dir.path().join("bad.transcript");
    std::fs::write(&bad, "> hi\\n\nsend hi\n").unwrap();
    let failed = test(&wasm("guest_handler"), &[&bad], &[]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        stderr.contains("bad.transcript: line 2: `send` is not an entry"),
        "{stderr}"
    );
}

#[test]
fn a_recording_stops_at_its_size_and_still_replays() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("rec");
    let server = Server::start_with(
        "guest_handler",
        &[
            "--record",
            record.to_str().unwrap(),
            "--record-max-bytes",
            "200",
        ],
    );
    let mut client = server.connect();
    for _ in 0..10 {
        client
            .write_all(b"0123456789012345678901234567890123456789\n")
            .unwrap();
        reply(&mut client);
    }
    drop(client);
    let found = transcripts(&record, 1);
    let text = std::fs::read_to_string(&found[0]).unwrap();
    assert!(text.contains("\ntruncated\n"), "{text}");
    let ok = test(&wasm("guest_handler"), &[&found[0]], &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}
