"""The classic interactive client for the greet handler (handlers/greet).

Type a message at the `-> ` prompt: the server logs it as `Hello MESSAGE` and
answers `-`, which is printed. Type `quit` to end: the server is sent
`--quit--`, its cue to close the connection.

    python3 tests/clients/greet_client.py [HOST [PORT]]    # 127.0.0.1 50007
"""

import socket
import sys


def client_program():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 50007
    client_socket = socket.socket()
    client_socket.connect((host, port))
    while True:
        try:
            message = input("-> ")
        except EOFError:  # stdin ran out (Ctrl-D, or a pipe): same as quit
            message = "quit"
        if message.strip().lower() == "quit":
            client_socket.send(b"--quit--")
            break
        if not message:  # sending nothing would wait forever for a reply
            continue
        client_socket.send(message.encode())
        data = client_socket.recv(1024)
        print("Received from server: " + data.decode())
    client_socket.close()


if __name__ == "__main__":
    client_program()
