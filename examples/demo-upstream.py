#!/usr/bin/python3
"""examples/demo-upstream.py [PORT [WS_PORT]]: a tiny upstream for the quick start.

- HTTP on PORT (default 9001): answers every request with what it received as JSON (method,
  path, query, headers, body length), so you can see what the gateway forwards: the normalised
  path, X-Forwarded-For, X-Request-Id, no hop-by-hop fields.
- WebSocket on WS_PORT (default PORT + 1, so 9002): echoes every message, text as text, binary as
  binary (python3-websockets, without compression: the gateway never negotiates it)."""
import asyncio
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import websockets


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


async def ws_echo(ws, path=None):
    try:
        async for message in ws:  # str for text, bytes for binary: sent back as received
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass  # the client (through the gateway) went away without a close handshake


def serve_ws(port, ready, failed):
    async def main():
        async with websockets.serve(ws_echo, "127.0.0.1", port, compression=None):
            ready.set()
            await asyncio.Future()  # forever
    try:
        asyncio.run(main())
    except OSError as e:  # the port is taken
        failed.append(e)
        ready.set()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    ws_port = int(sys.argv[2]) if len(sys.argv) > 2 else port + 1
    ready, failed = threading.Event(), []
    threading.Thread(target=serve_ws, args=(ws_port, ready, failed), daemon=True).start()
    if not ready.wait(10) or failed:
        sys.exit("demo-upstream: no WebSocket echo server on port %d: %s"
                 % (ws_port, failed[0] if failed else "timeout"))
    ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
