//! What signals do to `hotsock serve`: SIGHUP reloads; SIGINT and SIGTERM
//! drain (a second one exits at once); SIGUSR2 upgrades the binary, handing
//! every socket to the hotsock binary now on disk.

use std::sync::Arc;
use std::thread;

use anyhow::{Context as _, Result};
use hotsock::server::{Control, Reloader, Trigger, notify};
use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

/// Installs the signal handlers, on a thread of their own.
pub fn handle(control: Arc<Control>, reloader: Reloader) -> Result<()> {
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR2])
        .context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let name = signal_name(signal);
                match signal {
                    SIGHUP => {
                        info!("received SIGHUP: reloading");
                        reloader.request(Trigger::Signal);
                    }
                    SIGUSR2 => control.upgrade(),
                    _ if !stopping => {
                        info!("received {name}: shutting down");
                        notify("STOPPING=1");
                        control.stop();
                        stopping = true;
                    }
                    _ => {
                        warn!(
                            "received {name} again: exiting without waiting for open connections"
                        );
                        std::process::exit(128 + signal);
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGHUP => "SIGHUP",
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGUSR2 => "SIGUSR2",
        _ => "a signal",
    }
}
