"""The FastAPI app (routes, token, errors, OpenAPI shapes) and uvicorn running it until SIGTERM.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations (`request: Request`) as
objects, and `Request` is imported where the app is made (FastAPI is an extra)."""

import asyncio
import contextlib
import functools
import logging
import secrets
from pathlib import Path

from ..messages import printable
from .batching import Batcher
from .model import Model
from .requests import BODY_TIMEOUT_S, MAX_UPLOAD_BYTES, RequestError, Stopping, Uploads

log = logging.getLogger("deit.serve")


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# On SIGTERM, the requests already received have this long to finish (a batch takes milliseconds to seconds), then
# are cancelled; within the 10 s `docker stop` gives before its SIGKILL.
SHUTDOWN_GRACE_S = 5


# Open without the token: the page (a browser sends no header when it opens it; the page sends the token typed into
# it), the schema and its pages (the same for every deit server, nothing of the model in them) and the health check.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _error_responses(schemas, body_timeout_s: float) -> dict:
    """The errors every upload route may answer, as OpenAPI documents them."""
    return {
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

    check_token_text(token)

    schemas = _schemas()
    errors = _error_responses(schemas, body_timeout_s)

    batcher = Batcher(served.topk, max_batch=max_batch, wait_ms=wait_ms)
    stopping = Stopping()
    uploads = Uploads(served.prep, stopping, max_bytes=max_bytes, body_timeout_s=body_timeout_s)

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

    page = (Path(__file__).parents[1] / "static" / "index.html").read_text()

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
        images = await uploads.images(request)
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
        images = await uploads.images(request)
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
