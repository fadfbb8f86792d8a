#!/usr/bin/python3
"""examples/demo-upstream.py [PORT]: a tiny JSON upstream for the quick start. It answers every
request with what it received (method, path, query, headers, body length), so you can see what
the gateway forwards: the normalised path, X-Forwarded-For, X-Request-Id, no hop-by-hop fields."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        path, _, query = self.path.partition("?")
        out = json.dumps({"upstream": "demo", "method": self.command, "path": path,
                          "query": query, "headers": dict(self.headers.items()),
                          "body_bytes": len(body)}, indent=2).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = answer

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
