// {{name}}: a hotsock handler. hotsock calls `handler.handle` once per client
// connection, in a fresh instance on that connection's own thread.
//
// componentize-js turns wit/plugin.wit into imports this module can use. Unused
// here, but there to take:
//
//   import { join, publish, members } from "hotsock:plugin/rooms@0.3.0";
//     join(conn, "lobby");                        // get what others publish to "lobby"
//     publish(conn, "lobby", bytes);              // to every other member
//     members("lobby");                           // their ids, a BigUint64Array
//
//   import { open } from "wasi:keyvalue/store@0.2.0-draft";
//   import { increment } from "wasi:keyvalue/atomics@0.2.0-draft";
//     const visits = open("visits");              // once served with --keyvalue visits
//     increment(visits, "total", 1n);             // 64-bit numbers are BigInts
//     visits.get("greeting");                     // a Uint8Array, or undefined
//
// A function that fails in WIT (`result<_, error>`) throws an Error whose
// `payload` is the error, e.g. `{ tag: "access-denied" }` from `open` without
// --keyvalue, or "closed" from `conn.read`.

export const handler = {
  /** Serves one client until it leaves; hotsock closes the connection when
   * this returns. `throw "message"` (a string) ends it with that message
   * logged. */
  handle(conn) {
    // Guest stdout and stderr go to hotsock's log, labelled with the connection.
    console.log(`serving ${conn.peerAddr()}`);
    for (;;) {
      // `read` blocks until bytes arrive, as a Uint8Array; an empty one means
      // the client closed, and a throw that it is gone or has been idle too
      // long. (`conn.readWithin(4096, timeoutMs)` gives up sooner.)
      let message;
      try {
        message = conn.read(4096);
      } catch {
        return;
      }
      if (message.length === 0) {
        return;
      }
      // `write` blocks until all of it is sent.
      try {
        conn.write(message);
      } catch {
        return;
      }
    }
  },
};
