"""`deit serve`: a trained model behind a REST API (FastAPI, served by uvicorn).

- `POST /v1/predict`: images as multipart uploads (field `files`, one or several) or one image as the raw body;
  top-k labels and probabilities per image, as `deit predict --json` gives them.
- `POST /v1/attention`: one image; the PNG `deit attention` draws for it.
- `GET /v1/model`: name, classes, input size, parameters, where the weights came from. `GET /healthz`.

Concurrent requests' images are gathered into batches (`Batcher`: up to `max_batch`, waiting `wait_ms` at most for
more) and run in one worker thread, off the event loop. Every failure a client can cause is a 4xx with a one-line
JSON body `{"error": ...}`; no request names a file on the server. With a token, every route but the page, the
schema and /healthz (`PUBLIC_PATHS`) needs `Authorization: Bearer <token>`.

A request's body is bounded in bytes (counted as it arrives), in time (`BODY_TIMEOUT_S`) and in files; each image in
pixels. On SIGTERM, bodies still arriving are answered 503 at once and the rest have `SHUTDOWN_GRACE_S` to finish.
"""

import asyncio
import contextlib
import functools
import io
import logging
import os
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .messages import first_line, printable

log = logging.getLogger("deit.serve")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_UPLOAD_BYTES = 20 * 2**20  # per request, counted as the body arrives (a chunked body states no length first)
MAX_PIXELS = 40_000_000  # per image, checked from its header before it is decoded
MAX_IMAGES = 256  # per request
# A deadline on the whole body, not an idle time per chunk: a client sending a byte every few seconds would hold its
# connection for ever under the latter. 30 s carries the 20 MiB limit at 5.6 Mbit/s, a 3 MB photo at 0.8 Mbit/s.
BODY_TIMEOUT_S = 30.0
# On SIGTERM, the requests already received have this long to finish (a batch takes milliseconds to seconds), then
# are cancelled; within the 10 s `docker stop` gives before its SIGKILL.
SHUTDOWN_GRACE_S = 5
# Open without the token: the page (a browser sends no header when it opens it; the page sends the token typed into
# it), the schema and its pages (the same for every deit server, nothing of the model in them) and the health check.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
BACKENDS = ("torch", "onnx")
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


class Batcher:
    """Runs `fn` (a batch of prepared images (B, C, H, W) -> per-image results) on the images of concurrent
    requests together: a batch closes at `max_batch` images or `wait_ms` after its first, and runs in one worker
    thread, so the event loop keeps taking requests meanwhile."""

    def __init__(self, fn, *, max_batch: int = 32, wait_ms: float = 5.0):
        self.fn, self.max_batch, self.wait = fn, max_batch, wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deit-batch")
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def __call__(self, images: list[torch.Tensor]) -> list:
        """The results for these images, computed in whatever batches they fall into."""
        if self.task is None or self.task.done():  # never queue for a loop that is gone: the client would wait forever
            raise RequestError(503, "the model's batching loop is not running; restart deit serve")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures):
            self.queue.put_nowait((image, future))
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.wait
            while len(items) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    break
            batch = torch.stack([image for image, _ in items])
            try:
                results = await loop.run_in_executor(self.executor, self.fn, batch)
            except Exception as e:  # a failure of the model itself: every waiting request hears of it
                log.error("the model failed on a batch of %d: %s", len(items), e)
                failure = RequestError(500, f"the model failed on this batch: {first_line(e)}")
                for _, future in items:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for (_, future), result in zip(items, results):
                if not future.done():  # its client may have gone
                    future.set_result(result)


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


class Model:
    """The served model (a PyTorch module, or an exported ONNX file's `export.OnnxModel`), its preparation of
    images, and its top-k over a prepared batch."""

    def __init__(self, model, source: str, topk: int = 5):
        from .data.preprocess import preprocessing
        from .export import OnnxModel

        self.model = model.eval()
        self.backend = "onnx" if isinstance(model, OnnxModel) else "torch"
        self.prep = preprocessing(model)
        self.source = source
        self.k = min(topk, len(self.prep.class_names))

    def topk(self, batch: torch.Tensor) -> list[dict]:
        from .predict import rank, topk_json

        sources = [f"image {i + 1} of a batch" for i in range(len(batch))]
        return [
            {"topk": topk_json(*ranked)} for ranked in rank(self.model, batch, self.prep.class_names, self.k, sources)
        ]

    @property
    def draws_attention(self) -> bool:
        """The maps are read from the attention inside the model: an ONNX graph gives its logits only."""
        return self.backend == "torch"

    def attention_png(self, x: torch.Tensor, name: str) -> bytes:
        from .explain import attention_picture

        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "attention.png"
            attention_picture(self.model, self.prep, x, name, target)
            return target.read_bytes()

    def describe(self) -> dict:
        hp = getattr(self.model, "hparams", {})
        count = getattr(self.model, "parameter_count", None)
        return {
            "model": getattr(self.model, "model_name", None),
            "classes": list(self.prep.class_names),
            "input_size": hp.get("img_size"),
            "in_chans": hp.get("in_chans"),
            "parameters": count if self.backend == "onnx" else sum(p.numel() for p in self.model.parameters()),
            "weights": self.source,
            "backend": self.backend,
            "attention": self.draws_attention,
        }


def create_app(
    served: Model,
    *,
    max_batch: int = 32,
    wait_ms: float = 5.0,
    token: str | None = None,
    max_bytes: int = MAX_UPLOAD_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
):
    """The FastAPI app serving `served`. `app.state.stopping.set()` begins its stop (`serve` calls it on SIGTERM)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.requests import ClientDisconnect

    check_token_text(token)

    schemas = _schemas()
    errors = {
        status: {"model": schemas.Error, "description": text}
        for status, text in (
            (400, "a multipart form that cannot be read"),
            (401, "missing or wrong token"),
            (408, f"the body took more than {body_timeout_s:g} s to arrive"),
            (413, "an upload over the byte, file or pixel limit"),
            (415, "neither a multipart form nor an image body"),
            (422, "not an image, truncated, empty, or in another form field"),
            (503, "the server is stopping"),
        )
    }

    batcher = Batcher(served.topk, max_batch=max_batch, wait_ms=wait_ms)
    stopping = Stopping()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        stopping.start()
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="deit serve", version="1", lifespan=lifespan)
    app.state.stopping = stopping

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        # The body was left unread (too large, too slow, the server stopping): the connection cannot carry another
        # request, and a client still sending would otherwise keep it open.
        close = {"Connection": "close"} if e.status in (408, 413, 503) else None
        return JSONResponse({"error": str(e)}, status_code=e.status, headers=close)

    def check_token(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise RequestError(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'")

    async def received(request: Request, read):
        """`read(request)` (its body, or its form) with the body counted and timed as it arrives: 413 past max_bytes,
        408 past body_timeout_s, 503 when the server begins to stop, 400 when the client goes away."""
        count = 0

        async def receive():
            nonlocal count
            message = await request.receive()
            count += len(message.get("body", b""))
            if count > max_bytes:
                raise RequestError(413, f"the request has more than the {max_bytes:,} bytes this server takes")
            return message

        reading = asyncio.ensure_future(read(Request(request.scope, receive)))
        stop = asyncio.ensure_future(stopping.event.wait())
        try:
            done, _ = await asyncio.wait({reading, stop}, timeout=body_timeout_s, return_when=asyncio.FIRST_COMPLETED)
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
            f"the body took more than {body_timeout_s:g} s to arrive: send it whole within that, or a smaller image",
        )

    async def images_of(request: Request) -> list[tuple[str, torch.Tensor]]:
        """The request's images with their names: multipart uploads in `files` (or `file`), else the raw body as one
        image. Larger uploads are decoded in a worker thread: they do not hold up the other requests."""
        size = int(request.headers.get("content-length") or 0)
        if size > max_bytes:
            raise RequestError(413, f"the request has {size:,} bytes, more than the {max_bytes:,} this server takes")
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            try:
                form = await received(request, lambda r: r.form(max_files=MAX_IMAGES, max_part_size=max_bytes))
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
            named = [("the request body", await received(request, lambda r: r.body()))]
        else:
            raise RequestError(
                415, f"content type {kind or 'none'!r}: send multipart/form-data (field 'files') or an image/* body"
            )

        def decode_all() -> list[tuple[str, torch.Tensor]]:
            return [(name, decode(data, name, served.prep)) for name, data in named]

        if sum(len(data) for _, data in named) <= INLINE_DECODE_BYTES:
            return decode_all()  # a thread hop would cost more than the decoding
        return await asyncio.to_thread(decode_all)

    page = (Path(__file__).parent / "static" / "index.html").read_text()

    @app.get("/", include_in_schema=False)
    async def index():
        """The web page: pick or drop images, see each one's top-k and heat maps (no assets from elsewhere)."""
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/model", response_model=schemas.ModelInfo, responses={401: errors[401]})
    async def model_info(request: Request):
        check_token(request)
        return served.describe()

    @app.post(
        "/v1/predict",
        response_model=schemas.Predictions,
        responses={**errors, 500: {"model": schemas.Error, "description": "the model failed on the batch"}},
        openapi_extra=_IMAGES_BODY,
    )
    async def predict(request: Request):
        """Top-k labels and probabilities for each image, in the order sent."""
        check_token(request)
        images = await images_of(request)
        return {"predictions": await batcher([x for _, x in images])}

    @app.post(
        "/v1/attention",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "the image, then each map over it"},
            **errors,
            501: {"model": schemas.Error, "description": "the onnx backend draws no maps"},
        },
        openapi_extra=_IMAGES_BODY,
    )
    async def attention(request: Request):
        """The PNG of one image's attention maps: rollout, class token (and distillation token)."""
        check_token(request)
        if not served.draws_attention:
            raise RequestError(
                501,
                f"the {served.backend} backend gives no attention maps: serve the PyTorch weights (--backend torch)",
            )
        images = await images_of(request)
        if len(images) != 1:
            raise RequestError(422, f"attention takes one image, not {len(images)}")
        name, x = images[0]
        name = printable(name if len(name) <= 60 else name[:57] + "...")  # the title over the image
        png = await asyncio.get_running_loop().run_in_executor(batcher.executor, served.attention_png, x, name)
        return Response(png, media_type="image/png")

    return app


_IMAGE = {"type": "string", "format": "binary"}
_IMAGES_BODY = {  # the routes read the request themselves (a form or a raw image): its shape for the OpenAPI page
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"files": {"type": "array", "items": _IMAGE}}}
            },
            "image/*": {"schema": _IMAGE},
        },
    }
}


@functools.cache
def _schemas():
    """The responses' shapes, for the OpenAPI page and the checks of what is sent (made on first use: pydantic
    comes with fastapi, an extra)."""
    from types import SimpleNamespace

    from pydantic import BaseModel

    class Error(BaseModel):
        error: str

    class Label(BaseModel):
        label: str
        probability: float

    class ImagePrediction(BaseModel):
        topk: list[Label]

    class Predictions(BaseModel):
        predictions: list[ImagePrediction]

    class ModelInfo(BaseModel):
        model: str | None
        classes: list[str]
        input_size: int | None
        in_chans: int | None
        parameters: int | None
        weights: str
        backend: str
        attention: bool

    return SimpleNamespace(Error=Error, Predictions=Predictions, ModelInfo=ModelInfo)


def compute_threads(asked: int | None) -> int:
    """The model's compute threads: as asked, else the cores but one, left to the event loop that parses requests
    and decodes images (measured in docs/serve.md)."""
    return asked or max(1, (os.cpu_count() or 1) - 1)


def serving_model(weights: str, model_name: str | None, backend: str | None, threads: int | None = None):
    """The model to serve: PyTorch for any weights `deit predict` takes, onnxruntime (with `threads` threads) for a
    file of `deit export`, the default for a .onnx file."""
    from .export import load_onnx
    from .models import create_model

    is_onnx = str(weights).endswith(".onnx")
    backend = backend or ("onnx" if is_onnx else "torch")
    if backend == "onnx":
        if not is_onnx:
            raise ValueError(
                f"--backend onnx serves an exported .onnx file, not {weights}: deit export --weights {weights} "
                "-o model.onnx, then --weights model.onnx"
            )
        if model_name is not None:
            raise ValueError("--model does not apply to an ONNX file: its architecture is in the file")
        return load_onnx(weights, threads=threads)
    if is_onnx:
        raise ValueError(f"{weights} is an ONNX file: serve it with --backend onnx")
    return create_model(model_name, pretrained=weights)


def check_token_text(token: str | None) -> None:
    """A token a client can send: HTTP carries a header's value as printable ASCII, trimmed of spaces at its ends,
    so an empty token, or one with spaces or other characters, would refuse every request."""
    if token is not None and not (token and all("!" <= ch <= "~" for ch in token)):
        raise ValueError(
            "--token must be printable ASCII without spaces (it travels in an HTTP header), e.g. "
            '--token "$(openssl rand -hex 16)"'
        )


def check_bind(host: str, token: str | None, no_auth: bool) -> None:
    """A server reachable from other machines needs a token, or an explicit --no-auth."""
    if host not in LOCAL_HOSTS and token is None and not no_auth:
        raise ValueError(
            f"--host {host} lets other machines in: give --token SECRET (clients send 'Authorization: Bearer SECRET')"
            ", or --no-auth to serve without one"
        )


def serve(app, host: str, port: int) -> None:
    """uvicorn serving `app` (cmd_serve has checked the extra is installed) until SIGTERM or Ctrl-C, which end it
    within SHUTDOWN_GRACE_S (plus the batch running then) and reach the caller as KeyboardInterrupt: uvicorn.run
    would swallow it, and the command would exit 0."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.stopping.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    Server(config).run()
