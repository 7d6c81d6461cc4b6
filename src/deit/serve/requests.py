"""What a request may bring, and how it is read: its body bounded in bytes (counted as it arrives), in time and in
files, each image in pixels (from its header, before it is decoded); every failure a `RequestError` (a status and
one line)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging

import torch

from ..messages import printable

log = logging.getLogger("deit.serve")


MAX_UPLOAD_BYTES = 20 * 2**20  # per request, counted as the body arrives (a chunked body states no length first)


MAX_PIXELS = 40_000_000  # per image, checked from its header before it is decoded


MAX_IMAGES = 256  # per request


# A deadline on the whole body, not an idle time per chunk: a client sending a byte every few seconds would hold its
# connection for ever under the latter. 30 s carries the 20 MiB limit at 5.6 Mbit/s, a 3 MB photo at 0.8 Mbit/s.
BODY_TIMEOUT_S = 30.0


INLINE_DECODE_BYTES = 64 * 2**10  # uploads up to this size are decoded on the event loop (a digit: 0.4 ms)


class RequestError(Exception):
    """A client's mistake: an HTTP status and one line saying what and how to fix it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Stopping:
    """Set when the server begins to stop: the requests still receiving their bodies end at once (503) rather than
    hold the shutdown until their clients send the rest or give up."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event = asyncio.Event()

    def start(self) -> None:
        """On the serving loop (an Event belongs to the first loop that waits on it)."""
        self.loop, self.event = asyncio.get_running_loop(), asyncio.Event()

    def set(self) -> None:
        """Callable from a signal handler: call_soon_threadsafe also wakes a loop asleep in select()."""
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
                self.loop.call_soon_threadsafe(self.event.set)


def decode(data: bytes, name: str, prep) -> torch.Tensor:
    """An uploaded image as the model's input: 413 when its pixels exceed MAX_PIXELS (read from the header, before
    decoding), 422 when it is not a readable image."""
    from PIL import Image

    if not data:
        raise RequestError(422, f"{name}: the upload is empty; send an image file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        raise RequestError(413, f"{name}: more pixels than the {MAX_PIXELS:,} this server takes") from None
    except Exception:
        raise RequestError(422, f"{name}: not an image (PNG, JPEG, TIFF, ...)") from None
    if width * height > MAX_PIXELS:
        raise RequestError(413, f"{name}: {width}x{height} pixels, more than the {MAX_PIXELS:,} this server takes")
    try:
        return prep.read(io.BytesIO(data), name=name)
    except ValueError as e:
        raise RequestError(422, str(e)) from None


class Uploads:
    """How a request's images arrive: its body counted and timed as it comes (`received`), then read as multipart
    files or one raw image and decoded (`images`); every way it can go wrong is a RequestError."""

    def __init__(
        self, prep, stopping: Stopping, *, max_bytes: int = MAX_UPLOAD_BYTES, body_timeout_s: float = BODY_TIMEOUT_S
    ):
        self.prep, self.stopping = prep, stopping
        self.max_bytes, self.body_timeout_s = max_bytes, body_timeout_s

    async def received(self, request, read):
        """`read(request)` (its body, or its form) with the body counted and timed as it arrives: 413 past
        max_bytes, 408 past body_timeout_s, 503 when the server begins to stop, 400 when the client goes away."""
        from starlette.requests import ClientDisconnect, Request

        count = 0

        async def receive():
            nonlocal count
            message = await request.receive()
            count += len(message.get("body", b""))
            if count > self.max_bytes:
                raise RequestError(413, f"the request has more than the {self.max_bytes:,} bytes this server takes")
            return message

        reading = asyncio.ensure_future(read(Request(request.scope, receive)))
        stop = asyncio.ensure_future(self.stopping.event.wait())
        try:
            done, _ = await asyncio.wait(
                {reading, stop}, timeout=self.body_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            reading.cancel()
            stop.cancel()
        if reading in done:
            try:
                return reading.result()
            except ClientDisconnect:  # nobody hears the answer; the log says what happened, without a traceback
                host, port = request.client or ("a client", "")
                log.info("%s:%s closed the connection before sending the whole body", host, port)
                raise RequestError(400, "the connection was closed before the whole body arrived") from None
        if stop in done:
            raise RequestError(503, "the server is stopping: send the request again (to another server if it is down)")
        raise RequestError(
            408,
            f"the body took more than {self.body_timeout_s:g} s to arrive: send it whole within that, or a smaller "
            "image",
        )

    async def images(self, request) -> list[tuple[str, torch.Tensor]]:
        """The request's images with their names: multipart uploads in `files` (or `file`), else the raw body as one
        image. Larger uploads are decoded in a worker thread: they do not hold up the other requests."""
        size = int(request.headers.get("content-length") or 0)
        if size > self.max_bytes:
            raise RequestError(
                413, f"the request has {size:,} bytes, more than the {self.max_bytes:,} this server takes"
            )
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            try:
                form = await self.received(
                    request, lambda r: r.form(max_files=MAX_IMAGES, max_part_size=self.max_bytes)
                )
            except RequestError:
                raise
            except Exception as e:  # Starlette's own refusal: an HTTPException with a one-line detail
                detail = printable(getattr(e, "detail", "") or type(e).__name__)
                if "too many files" in detail.lower():
                    raise RequestError(
                        413, f"more than {MAX_IMAGES} files in one request: send at most {MAX_IMAGES} a request"
                    ) from None
                raise RequestError(400, f"the multipart form cannot be read: {detail}") from None
            try:
                uploads = form.getlist("files") + form.getlist("file")
                if not uploads or any(isinstance(u, str) for u in uploads):
                    raise RequestError(422, "send the images as files in the form field 'files'")
                named = [(u.filename or f"file {i + 1}", await u.read()) for i, u in enumerate(uploads)]
            finally:
                await form.close()  # its temporary files
        elif kind.startswith(("image/", "application/octet-stream")):
            named = [("the request body", await self.received(request, lambda r: r.body()))]
        else:
            raise RequestError(
                415, f"content type {kind or 'none'!r}: send multipart/form-data (field 'files') or an image/* body"
            )

        def decode_all() -> list[tuple[str, torch.Tensor]]:
            return [(name, decode(data, name, self.prep)) for name, data in named]

        if sum(len(data) for _, data in named) <= INLINE_DECODE_BYTES:
            return decode_all()  # a thread hop would cost more than the decoding
        return await asyncio.to_thread(decode_all)
