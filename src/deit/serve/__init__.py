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

from .app import PUBLIC_PATHS, SHUTDOWN_GRACE_S, check_bind, check_token_text, create_app, serve
from .batching import Batcher
from .model import BACKENDS, Model, compute_threads, serving_model
from .requests import MAX_IMAGES, RequestError

__all__ = [
    "BACKENDS",
    "MAX_IMAGES",
    "PUBLIC_PATHS",
    "SHUTDOWN_GRACE_S",
    "Batcher",
    "Model",
    "RequestError",
    "check_bind",
    "check_token_text",
    "compute_threads",
    "create_app",
    "serve",
    "serving_model",
]
