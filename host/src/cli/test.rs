//! `hotsock test`: replays recorded or hand-written transcripts against a
//! handler, in process, and says whether it answers as recorded.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use hotsock::runtime::{
    Capabilities, Handler, Outcome, Profile, Runtime, RuntimeConfig, Transcript, escape,
    run_command,
};

use crate::cli::args::{CacheArgs, parse_bucket_name, parse_env};

/// Options of `hotsock test`.
#[derive(Debug, Args)]
#[command(after_help = "\
A transcript is what `hotsock serve --record DIR` writes for each connection, or what you \
write by hand: `> bytes` the client sent, `< bytes` the handler wrote, with \\n, \\r, \\t, \\\\ \
and \\xHH escapes; `wall`, `mono`, `random` lines are the clock readings and random bytes the \
handler got, fed back in order so a reply that holds the time replays the same (docs/handlers.md: \
\"Testing a handler\"). Exit status: 0 when every transcript replays as recorded, 1 otherwise.")]
pub struct TestArgs {
    /// The handler component (.wasm or .cwasm) to test.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,

    /// Transcripts to replay against it, each as one client connection.
    #[arg(value_name = "TRANSCRIPT", required = true)]
    pub transcripts: Vec<PathBuf>,

    /// Give the handler an environment variable, as `serve --env` does.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Let the handler open key-value bucket NAME (empty at the start of the
    /// run, shared by its transcripts), as `serve --keyvalue` does.
    #[arg(long = "keyvalue", value_name = "NAME", value_parser = parse_bucket_name)]
    pub keyvalue: Vec<String>,

    /// Where compiled handlers are cached.
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Options of `hotsock run`.
#[derive(Debug, Args)]
#[command(after_help = "\
A handler project's `.cargo/config.toml` names it as the runner for wasm32-wasip2 \
(`runner = \"hotsock run\"`), so `cargo test` runs the crate's unit tests in WebAssembly. \
The program gets this process's stdio, arguments and environment, and no files or sockets.")]
pub struct RunArgs {
    /// The command component (.wasm) to run.
    #[arg(value_name = "PROGRAM")]
    pub program: PathBuf,

    /// Its arguments.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

/// Runs the program and exits with its status.
pub fn run_program(args: &RunArgs) -> Result<()> {
    let mut argv = vec![args.program.display().to_string()];
    argv.extend(args.args.iter().cloned());
    let status = run_command(&args.program, &argv)?;
    std::process::exit(status);
}

/// Replays every transcript, prints `ok` or where it first differs, and
/// fails if any differs.
pub fn run(args: &TestArgs) -> Result<()> {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        cache_dir: args.cache.dir(),
        ..RuntimeConfig::default()
    })?;
    let profile = Profile {
        capabilities: Capabilities {
            env: args.env.clone(),
            keyvalue: args.keyvalue.clone().into(),
            ..Capabilities::default()
        },
        ..Profile::default()
    };
    let handler = Handler::load(&runtime, &profile, &args.handler)?;
    let mut failed = 0;
    for path in &args.transcripts {
        let name = path.display();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the transcript {name}"))?;
        let transcript =
            Transcript::parse(&text).map_err(|why| anyhow::anyhow!("{name}: {why}"))?;
        let (written, outcome) = handler.replay(&runtime, &profile, &transcript);
        let expected = transcript.replies();
        match compare(&expected, &written, transcript.truncated()) {
            Ok(()) => println!("ok: {name} ({} replies)", expected.len()),
            Err(mismatch) => {
                failed += 1;
                println!("FAIL: {name}: {mismatch}");
                match outcome {
                    Outcome::Finished => {}
                    Outcome::HandlerError(message) => {
                        println!("  the handler returned an error: {message}");
                    }
                    Outcome::Faulted { fault, .. } => println!("  the handler failed: {fault}"),
                    Outcome::Stopped { .. } => println!("  the handler was stopped"),
                }
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} transcripts did not replay as recorded",
            args.transcripts.len()
        );
    }
    Ok(())
}

/// Compares what the handler wrote with the recorded replies, as one byte
/// stream each (a handler may split or join its writes differently), and
/// names the first recorded reply that differs. A truncated recording is
/// compared as far as it goes.
fn compare(expected: &[&[u8]], written: &[Vec<u8>], truncated: bool) -> Result<(), String> {
    let want: Vec<u8> = expected.concat();
    let got: Vec<u8> = written.concat();
    let same = want.len().min(got.len());
    let first = (0..same).find(|&i| want[i] != got[i]).unwrap_or(same);
    if first == want.len() && (truncated || got.len() == want.len()) {
        return Ok(());
    }
    // Where each recorded reply starts in the stream, and which holds `first`.
    let mut start = 0;
    for (n, reply) in expected.iter().enumerate() {
        let end = start + reply.len();
        if first < end {
            let shown_end = write_end(written, first).max(start).min(got.len());
            let got_text = match start < got.len() {
                true => format!("\"{}\"", escape(&got[start..shown_end])),
                false => "nothing (the handler wrote no more)".to_string(),
            };
            return Err(format!(
                "reply {} of {} differs\n  expected: \"{}\"\n  got:      {got_text}",
                n + 1,
                expected.len(),
                escape(reply),
            ));
        }
        start = end;
    }
    Err(format!(
        "the handler wrote more than the {} recorded replies\n  expected: nothing more\n  got:      \"{}\"",
        expected.len(),
        escape(&got[want.len()..write_end(written, want.len()).max(want.len())])
    ))
}

/// Where the write holding byte `at` of the written stream ends.
fn write_end(written: &[Vec<u8>], at: usize) -> usize {
    let mut end = 0;
    for write in written {
        end += write.len();
        if at < end {
            return end;
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_compared_as_a_stream_and_the_first_difference_named() {
        let expected: [&[u8]; 2] = [b"one\n", b"two\n"];
        let split = vec![b"on".to_vec(), b"e\ntwo\n".to_vec()];
        assert_eq!(compare(&expected, &split, false), Ok(()));
        let wrong = vec![b"one\n".to_vec(), b"TWO\n".to_vec()];
        let why = compare(&expected, &wrong, false).unwrap_err();
        assert!(why.starts_with("reply 2 of 2 differs"), "{why}");
        assert!(why.contains("expected: \"two\\n\""), "{why}");
        assert!(why.contains("got:      \"TWO\\n\""), "{why}");
        let short = vec![b"one\n".to_vec()];
        assert!(
            compare(&expected, &short, false)
                .unwrap_err()
                .contains("wrote no more")
        );
        let long = vec![b"one\ntwo\nthree\n".to_vec()];
        assert!(
            compare(&expected, &long, false)
                .unwrap_err()
                .contains("got:      \"three\\n\"")
        );
        assert_eq!(compare(&expected, &long, true), Ok(()));
    }
}
