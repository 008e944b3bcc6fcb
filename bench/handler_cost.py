#!/usr/bin/env python3
"""What a handler costs the server, per handler: start-up (compiling the
component, then again with the compiled code cached), the time from connect
to first reply of a new connection (a fresh instance each), and resident
memory per open connection. Run by `make handler-cost`; talks to 127.0.0.1 only.

usage: handler_cost.py HOTSOCK NAME=HANDLER.wasm [NAME=HANDLER.wasm ...]
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CONNECTIONS = 200  # sequential new connections, for the first-reply latency
IDLE = 100  # connections held open at once, for memory per connection


def start(hotsock, handler, cache):
    began = time.monotonic()
    proc = subprocess.Popen(
        [hotsock, "serve", "--addr", "127.0.0.1:0", "--cache-dir", cache, handler],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
        text=True,
    )
    line = proc.stdout.readline()
    # hotsock's announce line, hotsock::server::LISTENING in the Rust code.
    if not line.startswith("listening on "):
        sys.exit(f"{handler} did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1])
    return proc, port, time.monotonic() - began


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:"))


def round_trip(sock):
    sock.sendall(b"ping\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("connection closed early")
        reply += chunk


def measure(hotsock, handler):
    with tempfile.TemporaryDirectory() as cache:
        proc, port, cold = start(hotsock, handler, cache)
        proc.terminate()
        proc.wait()
        proc, port, warm = start(hotsock, handler, cache)
        try:
            latencies = []
            for _ in range(CONNECTIONS):
                began = time.monotonic()
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    round_trip(sock)
                latencies.append(time.monotonic() - began)
            time.sleep(0.2)
            before = rss_kib(proc.pid)
            held = []
            for _ in range(IDLE):
                sock = socket.create_connection(("127.0.0.1", port))
                round_trip(sock)
                held.append(sock)
            time.sleep(0.2)
            per_conn = (rss_kib(proc.pid) - before) / IDLE
            for sock in held:
                sock.close()
        finally:
            proc.terminate()
            proc.wait()
    return cold, warm, statistics.median(latencies), per_conn, os.path.getsize(handler)


def main():
    hotsock, handlers = sys.argv[1], sys.argv[2:]
    print(f"{'handler':<14} {'size':>9} {'start, compiling':>17} {'start, cached':>14} {'new conn p50':>13} {'RSS per conn':>13}")
    for spec in handlers:
        name, path = spec.split("=", 1)
        cold, warm, p50, per_conn, size = measure(hotsock, path)
        print(f"{name:<14} {size / 2**20:>7.1f} MB {cold:>15.2f} s {warm * 1000:>11.0f} ms {p50 * 1e6:>10.0f} µs {per_conn:>9.0f} KiB")


if __name__ == "__main__":
    main()
