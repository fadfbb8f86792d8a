#!/usr/bin/env python3
"""Fallback upstream for run.sh when nginx is absent: keep-alive HTTP/1.1, fixed body.
usage: upstream.py PORT BODY (binds 127.0.0.1). Much slower than nginx: results then measure it."""
import asyncio
import sys

PORT, BODY = int(sys.argv[1]), sys.argv[2].encode()
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(BODY)) + BODY


async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESP)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", PORT, backlog=1024)
    async with server:
        await server.serve_forever()


asyncio.run(main())
