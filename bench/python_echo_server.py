#!/usr/bin/env python3
"""The textbook socketserver.ThreadingTCPServer echo server: the Python
baseline that `make bench` holds hotsock against, with the same reply as
hotsock's default handler.

usage: python_echo_server.py    binds 127.0.0.1:0, prints `listening on 127.0.0.1:PORT`
"""

import socket
import socketserver
import time

CHUNK = 1024  # the default handler's conn.read(1024): same chunks, same replies


def echo_reply(chunk: bytes) -> bytes:
    """`Echo=>CHUNK at TIME`; a trailing \\n or \\r\\n moves to the end, as
    guest-handler/src/ctime.rs does, so a line in gives a line out."""
    data, eol = chunk, b""
    for ending in (b"\r\n", b"\n"):
        if chunk.endswith(ending):
            data, eol = chunk[: -len(ending)], ending
            break
    return b"Echo=>" + data + b" at " + time.ctime().encode() + eol


class EchoHandler(socketserver.BaseRequestHandler):
    """One client, on its own thread: a reply per chunk until it closes."""

    def setup(self):
        # hotsock and native-echo set TCP_NODELAY; so does this, so all three
        # servers put their replies on the wire alike.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self):
        while True:
            try:
                data = self.request.recv(CHUNK)
                if not data:
                    return  # the client closed
                self.request.sendall(echo_reply(data))
            except ConnectionError:
                return  # the client is gone: this connection is done


class EchoServer(socketserver.ThreadingTCPServer):
    """The textbook server: a new thread per client, no pool."""

    daemon_threads = True  # one thread per client, not joined at exit
    allow_reuse_address = True
    # The default backlog of 5 would make the bench measure SYN-backlog drops
    # (and clients' 1 s SYN retransmits) rather than Python.
    request_queue_size = 128


def main():
    with EchoServer(("127.0.0.1", 0), EchoHandler) as server:
        # The bench waits for this line before connecting; flush it out of the pipe.
        # It is hotsock's own announce line (hotsock::server::LISTENING), which
        # the bench reads for all three servers, so it must stay the same.
        print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
