"""A minimal edge decoder service: POST the bytes of an .aec file to /decode, get a PNG back.

It needs only `pip install aectl[cpu]` (no torch, no encoder) and a decoder bundle, e.g. one made with
`aectl bundle strip BUNDLE -o edge-bundle`, or `aectl export RUN --decoder-only -o edge-bundle` with the options
the full bundle was exported with (`--entropy-classes 8` for the shipped ones), so that it decodes its files.

    python examples/edge_client.py --bundle edge-bundle --port 8080
    curl --data-binary @photo.aec http://127.0.0.1:8080/decode -o photo.png

The decoder session is created once at start-up and reused for every request, so a broken bundle or an
unusable provider stops the service there, in one line. Bad input gets HTTP 400 with a one-line reason, a
fault of the service 500; either way the service keeps running. A client has `--timeout` seconds (60) to send
its headers, and as long again for its body plus a second per 64 KiB received (a trickle of one byte a minute
held a thread forever); at most `--max-decodes` files decode at once,
each within `--max-pixels`, so that a few small files declaring huge images cannot take all the memory
(three 67 Mpx decodes at once peaked at 3.5 GB).
"""
from __future__ import annotations

import argparse
import io
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aectl.runtime import AectlError, Decoder, PixelLimitError
from aectl.runtime.image_io import PNG_COMPRESSION

MAX_BODY = 64 << 20  # refuse uploads above 64 MiB
TIMEOUT_S = 60  # default --timeout: for a client's request line and headers, and per socket write of the answer
MIN_RATE = 64 << 10  # bytes/s: each chunk of the body read extends the deadline by its size at this rate
MAX_PIXELS = 1 << 25  # 33.5 Mpx (8192 x 4096): an edge client's photos; raise it with --max-pixels
MAX_DECODES = 2  # decodes at once; other requests wait for a slot (up to TIMEOUT_S, then 503)


def make_handler(decoder: Decoder, slots: threading.Semaphore, timeout_s: float = TIMEOUT_S):
    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s
        protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` (curl waited 1 s for it on every file
        # over 1 MiB); each connection still carries one request (every reply closes it)

        def setup(self) -> None:
            super().setup()
            # A deadline for the request line and headers, not only per read: shutting the socket ends a
            # blocked read. The body has its own (_read_body).
            self._deadline = threading.Timer(timeout_s, self._drop)
            self._deadline.daemon = True
            self._deadline.start()

        def _drop(self) -> None:
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self) -> None:
            self._deadline.cancel()
            super().finish()

        def _read_body(self, length: int) -> bytes | None:
            """The body (shorter than `length` where the client ended its upload early), or None when the client
            is too slow: `timeout_s`, plus a second for every MIN_RATE bytes received (as Apache's
            mod_reqtimeout does): a trickle of a byte a minute is dropped, a steady 64 MiB upload at 1 Mbit/s is
            not (a fixed 60 s cut off every body over 7.5 MB at that rate)."""
            deadline, chunks, left = time.monotonic() + timeout_s, [], length
            try:
                while left:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self.connection.settimeout(remaining)
                    chunk = self.rfile.read1(min(left, 1 << 20))
                    if not chunk:  # the client ended its upload (or left): the 400 below says how short it is
                        break
                    chunks.append(chunk)
                    left -= len(chunk)
                    deadline += len(chunk) / MIN_RATE
            except OSError:  # timed out or reset
                return None
            finally:
                self.connection.settimeout(timeout_s)
            return b"".join(chunks)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self._deadline.cancel()  # the headers are in
            if urllib.parse.urlsplit(self.path).path != "/decode":  # a query string was "no such path"
                return self._reply(404, b"error: no such path; use POST /decode\n", "text/plain")
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():  # read as an empty body
                return self._reply(411, b"error: send Content-Length; chunked uploads are not read\n", "text/plain")
            # Digits, in one header or several that agree (int() took "+1" and "1_000"; the first of two
            # conflicting headers won).
            values = {value.strip() for value in self.headers.get_all("Content-Length") or []}
            text = values.pop() if len(values) == 1 else ""
            length = int(text) if re.fullmatch(r"\d{1,12}", text) else -1
            if not 0 < length <= MAX_BODY:
                return self._reply(400, b"error: body must be the bytes of one .aec file (at most 64 MiB), with "
                                   b"one Content-Length\n", "text/plain")
            body = self._read_body(length)
            if body is None:  # too slow, or gone: said if anyone is still listening
                return self._reply(408, b"error: the request body came too slowly\n", "text/plain")
            if len(body) < length:  # it was "came too slowly", at once
                return self._reply(400, f"error: the body ended after {len(body)} of the {length} bytes its "
                                   "Content-Length announced\n".encode(), "text/plain")
            if not slots.acquire(timeout=timeout_s):
                return self._reply(503, b"error: busy decoding other files; retry later\n", "text/plain",
                                   {"Retry-After": "5"})
            try:
                image = decoder.decompress(body)
                png = io.BytesIO()
                # zlib level 1, as `aectl decompress` writes: 4x faster than Pillow's default for an 8% larger
                # PNG, the right trade for a service next to its client (benchmarks/README.md).
                image.save(png, format="PNG", compress_level=PNG_COMPRESSION)
            except PixelLimitError as exc:  # the client cannot raise the limit ("raise max_pixels"): its operator can
                return self._reply(400, f"error: {exc.reason}, this service's --max-pixels\n".encode(), "text/plain")
            except AectlError as exc:
                return self._reply(400, f"error: {exc}\n".encode(), "text/plain")
            except Exception as exc:  # the service's fault, not the client's: said so, and kept serving
                print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                return self._reply(500, f"error: internal error: {type(exc).__name__}\n".encode(), "text/plain")
            finally:
                slots.release()
            self._reply(200, png.getvalue(), "image/png")

        def _not_allowed(self) -> None:
            """405 with `Allow: POST` for the methods HTTP defines (http.server answered 501, "not
            implemented", as for a method nobody knows)."""
            self.close_connection = True
            self._reply(405, f"error: {self.command} is not allowed; use POST /decode\n".encode(), "text/plain",
                        {"Allow": "POST"})

        do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815
        do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own refusals (an unknown method, a malformed request line) as one line of text,
            not a page of HTML. A request line that failed to parse leaves the version at HTTP/0.9, for which
            http.server writes no status line: the answer was the bare text."""
            self.close_connection = True
            if self.request_version == "HTTP/0.9":
                self.request_version = "HTTP/1.0"
            self._reply(code, f"error: {message or self.responses.get(code, ('',))[0]}; use POST /decode\n"
                        .encode(), "text/plain")

        def _reply(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
            self.close_connection = True  # one request per connection
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
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


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's 5 reset some of 20 clients arriving at once


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Decode .aec bytes to PNG over HTTP.")
    parser.add_argument("--bundle", required=True, help="decoder (or full) bundle directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse files of larger images")
    parser.add_argument("--max-decodes", type=int, default=MAX_DECODES, help="files decoded at once")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help="seconds a client has for its headers, and for its body plus 1 s per 64 KiB received")
    args = parser.parse_args(argv)
    if args.max_decodes < 1:
        sys.exit("error: --max-decodes must be 1 or more")
    if args.max_pixels < 1:
        sys.exit("error: --max-pixels must be 1 or more")
    if not 0 < args.timeout <= 86400:
        sys.exit("error: --timeout must be more than 0 and at most 86400 seconds")
    try:
        decoder = Decoder(args.bundle, provider=args.provider, max_pixels=args.max_pixels)
        decoder.network.session("decoder")  # now: a broken bundle fails here, not at every request
    except AectlError as exc:
        sys.exit(f"error: {exc}")
    except Exception as exc:  # a bundle no check foresaw: one line, not a traceback
        sys.exit(f"error: internal error loading {args.bundle}: {type(exc).__name__}: {exc}")
    try:
        server = Server((args.host, args.port), make_handler(decoder, threading.Semaphore(args.max_decodes),
                                                            args.timeout))
    except (OSError, OverflowError) as exc:  # port taken or out of range, unknown host
        sys.exit(f"error: cannot listen on {args.host}:{args.port}: {getattr(exc, 'strerror', None) or exc}")
    print(f"listening on http://{args.host}:{server.server_address[1]}/decode", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop`, systemd: as Ctrl-C (it died by the signal, 143)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        # Handler threads may be inside an onnxruntime run: shutting the interpreter down under them aborted
        # the process ("terminate called without an active exception", SIGABRT). Leave at once instead.
        server.server_close()
        sys.stdout.flush()
        os._exit(0)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
