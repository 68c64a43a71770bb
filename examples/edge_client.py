"""A minimal edge decoder service: POST the bytes of an .aec file to /decode, get a PNG back.

It needs only `pip install aectl[cpu]` (no torch, no encoder) and a decoder bundle, e.g. one made with
`aectl bundle strip BUNDLE -o edge-bundle` or `aectl export RUN --decoder-only -o edge-bundle`.

    python examples/edge_client.py --bundle edge-bundle --port 8080
    curl --data-binary @photo.aec http://127.0.0.1:8080/decode -o photo.png

The decoder session is created once at start-up and reused for every request, so a broken bundle or an
unusable provider stops the service there, in one line. Bad input gets HTTP 400 with a one-line reason, a
fault of the service 500; either way the service keeps running. A client that sends less than it announced
is dropped after `TIMEOUT_S`.
"""
from __future__ import annotations

import argparse
import io
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aectl.runtime import AectlError, Decoder
from aectl.runtime.image_io import PNG_COMPRESSION

MAX_BODY = 64 << 20  # refuse uploads above 64 MiB
TIMEOUT_S = 60  # per socket read or write: a stalled client held its thread forever


def make_handler(decoder: Decoder):
    class Handler(BaseHTTPRequestHandler):
        timeout = TIMEOUT_S

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
                body = self.rfile.read(length)
            except OSError:  # timed out or reset: nobody is left to answer
                self.close_connection = True
                return
            try:
                image = decoder.decompress(body)
                png = io.BytesIO()
                # zlib level 1, as `aectl decompress` writes: 4x faster than Pillow's default for an 8% larger
                # PNG, the right trade for a service next to its client (benchmarks/README.md).
                image.save(png, format="PNG", compress_level=PNG_COMPRESSION)
            except AectlError as exc:
                return self._reply(400, f"error: {exc}\n".encode(), "text/plain")
            except Exception as exc:  # the service's fault, not the client's: said so, and kept serving
                print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                return self._reply(500, f"error: internal error: {type(exc).__name__}\n".encode(), "text/plain")
            self._reply(200, png.getvalue(), "image/png")

        def _not_allowed(self) -> None:
            """405 with `Allow: POST` for the methods HTTP defines (http.server answered 501, "not
            implemented", as for a method nobody knows)."""
            self.close_connection = True
            self._reply(405, f"error: {self.command} is not allowed; use POST /decode\n".encode(), "text/plain",
                        {"Allow": "POST"})

        do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own refusals (an unknown method, a malformed request line) as one line of text,
            not a page of HTML."""
            self.close_connection = True
            self._reply(code, f"error: {message or self.responses.get(code, ('',))[0]}; use POST /decode\n"
                        .encode(), "text/plain")

        def _reply(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":  # a HEAD answer has headers only
                    self.wfile.write(body)
            except OSError:  # the client left before its answer: a traceback on stderr said so
                self.close_connection = True

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
        decoder.network.session("decoder")  # now: a broken bundle fails here, not at every request
    except AectlError as exc:
        sys.exit(f"error: {exc}")
    try:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(decoder))
    except (OSError, OverflowError) as exc:  # port taken or out of range, unknown host
        sys.exit(f"error: cannot listen on {args.host}:{args.port}: {getattr(exc, 'strerror', None) or exc}")
    print(f"listening on http://{args.host}:{server.server_address[1]}/decode", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
