#!/usr/bin/python3
"""The lab's outside HTTP server (scripts/lab.sh runs it in netns P-www).

Serves a directory tree, and /whoami answers the client's address and port
("ADDRESS:PORT") as the server sees them, after any NAT on the way: what
the egress tests check.
Every request is logged to stderr with the client's address and port.

Usage: lab-www.py ADDRESS PORT DIRECTORY
"""

import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    # Keep-alive, so a client's many requests show one source port.
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/whoami":
            host, port = self.client_address[:2]
            body = f"{host}:{port}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, fmt, *args):
        host, port = self.client_address[:2]
        sys.stderr.write(f"{self.log_date_time_string()} client {host}:{port} {fmt % args}\n")
        sys.stderr.flush()


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    address, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    handler = functools.partial(Handler, directory=directory)
    server = http.server.ThreadingHTTPServer((address, port), handler)
    server.daemon_threads = True
    print(f"serving {directory} on http://{address}:{port}/", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
