"""A minimal edge decoder service: POST the bytes of an .aec file to /decode, get a PNG back.

It needs only `pip install aectl[cpu]` (no torch, no encoder) and a decoder bundle, e.g. one made with
`aectl bundle strip BUNDLE -o edge-bundle` or `aectl export RUN --decoder-only -o edge-bundle`.

    python examples/edge_client.py --bundle edge-bundle --port 8080
    curl --data-binary @photo.aec http://127.0.0.1:8080/decode -o photo.png

The decoder session is created once at start-up and reused for every request. Bad input gets HTTP 400 with
a one-line reason; the service keeps running.
"""
from __future__ import annotations

import argparse
import io
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aectl.runtime import AectlError, Decoder
from aectl.runtime.image_io import PNG_COMPRESSION

MAX_BODY = 64 << 20  # refuse uploads above 64 MiB


def make_handler(decoder: Decoder):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/decode":
                return self._reply(404, b"use POST /decode\n", "text/plain")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:  # "Content-Length: abc" dropped the connection with a traceback on stderr
                length = -1
            if not 0 < length <= MAX_BODY:
                return self._reply(400, b"error: body must be the bytes of one .aec file\n", "text/plain")
            try:
                image = decoder.decompress(self.rfile.read(length))
            except AectlError as exc:
                return self._reply(400, f"error: {exc}\n".encode(), "text/plain")
            png = io.BytesIO()
            # zlib level 1, as `aectl decompress` writes: 4x faster than Pillow's default for an 8% larger PNG,
            # the right trade for a service next to its client (benchmarks/README.md).
            image.save(png, format="PNG", compress_level=PNG_COMPRESSION)
            self._reply(200, png.getvalue(), "image/png")

        def _reply(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep stdout for the start-up line
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Decode .aec bytes to PNG over HTTP.")
    parser.add_argument("--bundle", required=True, help="decoder (or full) bundle directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--provider", default="cpu")
    args = parser.parse_args(argv)
    try:
        decoder = Decoder(args.bundle, provider=args.provider)
    except AectlError as exc:
        sys.exit(f"error: {exc}")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(decoder))
    print(f"listening on http://{args.host}:{server.server_address[1]}/decode", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
