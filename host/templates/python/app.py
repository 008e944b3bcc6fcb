"""{{name}}: a hotsock handler. hotsock calls `handle` once per client
connection, in a fresh instance on that connection's own thread."""

# `componentize-py` generates the `wit_world` package from wit/plugin.wit:
# the `Handler` protocol to implement and the `Connection` to talk through.
# It also offers, unused here: `wit_world.imports.rooms` (`join(conn, "lobby")`,
# `publish(conn, "lobby", b"hi\n")` to every other member, `members`), and
# `wit_world.imports.store` / `atomics`, key-value buckets shared by every
# connection once the operator grants them (`hotsock serve --keyvalue NAME`).
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Connection


class Handler(exports.Handler):
    def handle(self, conn: Connection) -> None:
        """Serves one client until it leaves; hotsock closes the connection
        when this returns. Raising `Err("message")` logs the message."""
        # Guest stdout and stderr go to hotsock's log, labelled with the connection.
        print(f"serving {conn.peer_addr()}")
        while True:
            # `read` blocks until bytes arrive; b"" means the client closed,
            # and `Err` that it is gone or has been idle too long.
            # (`conn.read_within(4096, timeout_ms)` gives up sooner.)
            try:
                message = conn.read(4096)
            except Err:
                return
            if not message:
                return
            # `write` blocks until all of it is sent.
            try:
                conn.write(message)
            except Err:
                return
