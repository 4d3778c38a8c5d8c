"""What bounds the work one request can cost the service, before it costs anything.

- `UploadLimit` (ASGI middleware): a Content-Length over the limit is answered 413 before a byte of
  the body is read; a chunked body is counted as it streams in and cut at the limit (413, with how
  much was read), so nothing over the limit is ever buffered or spooled to disk; a body not whole
  within `body_timeout_s` of its first read (however it trickles in) is answered 408; and at most
  `max_uploads` bodies are read at once (more are answered 503 at once and their connections
  closed), so slow uploads cannot take every connection and `/healthz` keeps answering.
- `DecodeGate`: the image header is read first (size, format), then the pixels are decoded in one of
  two thread pools: heavy images (more than `heavy_pixels` and a format that cannot decode at a
  reduced scale) one at a time, the rest beside them, so a handful of decompression bombs cannot
  take the memory or starve ordinary photos; large JPEGs decode at a reduced DCT scale (`draft`).
  Waiting for and running a decode counts against the request's `--timeout`.
- `HeaderTimeoutH11`: uvicorn's HTTP/1.1 protocol with a deadline for a request's headers, so a client
  trickling them byte by byte (slowloris) is cut off, and socket reads of `READ_SIZE` bytes, so a body
  cut at the limit was read at most a few tens of kB past it; uvicorn's `limit_concurrency` caps
  connections.

Written by hand because Starlette and uvicorn bound none of these (Starlette reads any body into a
spooled temporary file; uvicorn has no header-read timeout).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

from fastapi import HTTPException
from PIL import Image

from tagcap.errors import ImageTooLargeError
from tagcap.features.images import load_image

SLACK = 64 * 1024    # a Content-Length may exceed the limit by this much (the multipart envelope) before 413
ENVELOPE = 4 * 1024  # a streamed body is cut once it is this far over the limit
READ_SIZE = 16 * 1024  # bytes per socket read (asyncio's default is 256 KiB): a cut lands this close to the limit


class BodyTooLarge(HTTPException):
    """Raised inside the body stream; FastAPI passes HTTPExceptions raised while parsing straight on."""

    def __init__(self, limit: int, read: int):
        super().__init__(413, f"upload over the {limit:,}-byte limit (stopped reading after {read:,} bytes)")


class UploadLimit:
    def __init__(self, app, max_upload_bytes: int, body_timeout_s: float = 30.0, max_uploads: int = 16):
        self.app, self.limit, self.body_timeout_s = app, max_upload_bytes, body_timeout_s
        self.max_uploads, self.uploads = max_uploads, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):  # no body to wait for
            return await self.app(scope, receive, send)
        if self.uploads >= self.max_uploads:
            return await _reply(send, 503, f"{self.max_uploads} uploads are being received already; try again")
        self.uploads += 1
        try:
            return await self._limited(scope, receive, send)
        finally:
            self.uploads -= 1

    async def _limited(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await _reply(send, 400, "a Content-Length that is not a number")
            if int(length) > self.limit + SLACK:
                return await _reply(send, 413, f"upload over the {self.limit:,}-byte limit (Content-Length "
                                               f"{int(length):,}; nothing was read)")
        read, deadline = 0, None

        async def counted():
            nonlocal read, deadline
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.body_timeout_s  # the whole body, from its first read
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the upload was not whole within {self.body_timeout_s:g} s") from None
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.limit + ENVELOPE:
                    raise BodyTooLarge(self.limit, read)
            return message

        return await self.app(scope, counted, send)


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class DecodeGate:
    """Decodes uploads within a budget (see the module docstring)."""

    def __init__(self, max_pixels: int, heavy_pixels: int = 16_000_000, reduce_to: int | None = None,
                 light_workers: int | None = None):
        self.max_pixels, self.heavy_pixels, self.reduce_to = max_pixels, heavy_pixels, reduce_to
        self.heavy = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagcap-decode-heavy")
        self.light = ThreadPoolExecutor(max_workers=light_workers or max(2, os.cpu_count() or 2),
                                        thread_name_prefix="tagcap-decode")

    def probe(self, data: bytes, name: str) -> tuple[int, int, str | None]:
        """Width, height and format from the header alone (no pixels decoded)."""
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.width, img.height, img.format
        except Exception:  # noqa: BLE001  -- undecodable: load_image gives the precise reason
            return 0, 0, None

    async def decode(self, data: bytes, name: str) -> Image.Image:
        width, height, fmt = self.probe(data, name)
        if width * height > self.max_pixels:
            raise ImageTooLargeError(name, f"image is {width}x{height}, over the {self.max_pixels:,} pixel limit")
        heavy = width * height > self.heavy_pixels and fmt != "JPEG"  # JPEGs decode at a reduced scale
        pool = self.heavy if heavy else self.light
        loop = asyncio.get_running_loop()
        # a cancelled wait (the request timed out) drops a decode not yet started; one running finishes
        return await loop.run_in_executor(pool, lambda: load_image(io.BytesIO(data), name, self.max_pixels,
                                                                   reduce_to=self.reduce_to))

    def shutdown(self) -> None:
        for pool in (self.heavy, self.light):
            pool.shutdown(wait=False, cancel_futures=True)


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol class with a deadline for each request's headers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _header_timer = None

        def _arm(self):
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self):
            self._header_timer = None
            if self.conn.their_state == h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # headers not complete in time: no response owed

        def connection_made(self, transport):
            super().connection_made(transport)
            if hasattr(transport, "max_size"):  # asyncio's socket transport reads up to max_size at once
                transport.max_size = READ_SIZE
            self._arm()

        def handle_events(self):
            super().handle_events()
            if self.conn.their_state != h11.IDLE:
                self._disarm()  # the headers are in

        def on_response_complete(self):
            if self.conn.their_state == h11.SEND_BODY and not self.transport.is_closing():
                # answered (413, 408) before the body ended: close rather than drain the rest of it
                self.transport.close()
                return
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutH11
