//! Guest stdout and stderr reach the server log, labelled with the connection.

use crate::util::{Server, ask};

#[test]
fn guest_stdout_and_stderr_are_logged_with_the_connection_id_and_peer() {
    let server = Server::start("probe");
    let mut client = server.connect();
    let name = format!("conn {} v1-", ask(&mut client, "whoami"));
    assert_eq!(ask(&mut client, "print hello from the guest"), "printed");
    assert_eq!(ask(&mut client, "eprint something went wrong"), "printed");
    server.wait_for_log(&[&name, " stdout: hello from the guest"]);
    server.wait_for_log(&[&name, " stderr: something went wrong"]);
}

#[test]
fn connection_ids_are_distinct() {
    let server = Server::start("probe");
    let ids: Vec<String> = (0..5)
        .map(|_| {
            let who = ask(&mut server.connect(), "whoami");
            who.split_once(' ').expect("ID PEER").0.to_string()
        })
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids {ids:?}");
}
