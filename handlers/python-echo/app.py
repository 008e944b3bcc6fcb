"""The default echo handler, in Python: the textbook thread server's reply,
`Echo=>DATA at TIME`, for each chunk of up to 1024 bytes, until the client
closes. It behaves exactly like the Rust one in guest-handler/, and passes the
same tests: bytes are echoed as they came, a trailing line ending moves to the
end of the reply, and the time is UTC in the format of `time.ctime()`.

Build: componentize-py -d ../../wit -w plugin componentize app -o python_echo.wasm
"""

import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Connection


class Handler(exports.Handler):
    def handle(self, conn: Connection) -> None:
        while True:
            # End of stream, a reset or the host's idle timeout: this client is done.
            try:
                chunk = conn.read(1024)
            except Err:
                return
            if not chunk:
                return
            # A line in gives a line out, for clients such as nc.
            eol = b"\r\n" if chunk.endswith(b"\r\n") else b"\n" if chunk.endswith(b"\n") else b""
            data = chunk[: len(chunk) - len(eol)]
            try:
                conn.write(b"Echo=>" + data + b" at " + time.ctime().encode() + eol)
            except Err:
                return
