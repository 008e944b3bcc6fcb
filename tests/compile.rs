//! `hotsock compile` writes the precompiled form (.cwasm), which `check`,
//! `serve` and `swap` load without compiling.

use std::path::Path;

use crate::util::{Server, ask, echo, error_of, hotsock, wasm};

fn compile(handler: &Path, output: &Path) {
    let done = hotsock()
        .arg("compile")
        .arg(handler)
        .arg("-o")
        .arg(output)
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("compiled"));
}

#[test]
fn serve_and_swap_accept_precompiled_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let (echo_cwasm, probe_cwasm) = (
        dir.path().join("echo.cwasm"),
        dir.path().join("probe.cwasm"),
    );
    compile(&wasm("guest_handler"), &echo_cwasm);
    compile(&wasm("probe"), &probe_cwasm);

    let checked = hotsock().arg("check").arg(&echo_cwasm).output().unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    let server = Server::start_path(&echo_cwasm, &["--admin", "127.0.0.1:0"]);
    assert_eq!(echo(&mut server.connect(), b"hi"), [b"hi"]);
    server.wait_for_log(&["loading precompiled native code"]);

    let swapped = server
        .admin_command("swap")
        .arg(&probe_cwasm)
        .output()
        .unwrap();
    assert!(
        swapped.status.success(),
        "{}",
        String::from_utf8_lossy(&swapped.stderr)
    );
    assert_eq!(ask(&mut server.connect(), "hello"), "hello");
}

#[test]
fn a_damaged_precompiled_file_is_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cwasm = dir.path().join("echo.cwasm");
    compile(&wasm("guest_handler"), &cwasm);
    let bytes = std::fs::read(&cwasm).unwrap();
    std::fs::write(&cwasm, &bytes[..bytes.len() / 2]).unwrap();
    let stderr = error_of(hotsock().arg("check").arg(&cwasm));
    assert!(
        stderr.contains("not a precompiled component this hotsock can load"),
        "{stderr}"
    );
    assert!(
        stderr.contains("run `hotsock compile` on the .wasm again"),
        "{stderr}"
    );
}
