"""`deit serve`: the REST API against `deit predict` and `deit eval` on the demo's test digits, bad uploads answered
with a 4xx while the server keeps serving, batching of concurrent requests, the token, the bind check."""

import asyncio
import contextlib
import io
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from conftest import same_topk
from fastapi.testclient import TestClient

import deit
from deit.cli import main
from deit.data import build_dataset
from deit.serve import MAX_IMAGES, PUBLIC_PATHS, SHUTDOWN_GRACE_S, Batcher, Model, check_bind, create_app


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The 1,000 test digits as PNG files, in class folders."""
    val, _ = build_dataset("mnist5k", None, False)
    folder = tmp_path_factory.mktemp("digits")
    for i in range(len(val)):
        (folder / str(val.targets[i])).mkdir(exist_ok=True)
        Image.fromarray(val.images[i], "L").save(folder / str(val.targets[i]) / f"{i}.png")
    return sorted(folder.glob("*/*.png"))


@pytest.fixture(scope="module")
def client(trained):
    model = deit.create_model(pretrained=trained)
    with TestClient(create_app(Model(model, str(trained)), max_batch=32)) as c:
        yield c


@pytest.mark.smoke
def test_predict_gives_deit_predicts_numbers_and_evals_accuracy(client, trained, digits, capsys):
    assert main(["predict", str(digits[0].parent.parent), "--weights", str(trained), "--json"]) == 0
    expected = {row["path"]: row["topk"] for row in map(json.loads, capsys.readouterr().out.splitlines())}
    served = {}
    for start in range(0, len(digits), 100):  # several images a request
        chunk = digits[start : start + 100]
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in chunk]
        response = client.post("/v1/predict", files=files)
        assert response.status_code == 200, response.text
        served.update(zip(map(str, chunk), (p["topk"] for p in response.json()["predictions"])))
    assert served.keys() == expected.keys()
    for path, topk in served.items():
        assert same_topk(topk, expected[path]), (path, topk, expected[path])
    accuracy = 100 * sum(topk[0]["label"] == path.split("/")[-2] for path, topk in served.items()) / len(served)
    assert main(["eval", "--weights", str(trained), "--data-set", "mnist5k", "--num_workers", "0"]) == 0
    assert f"top-1 {accuracy:.2f}%" in capsys.readouterr().out


def test_a_raw_body_is_one_image(client, digits):
    response = client.post("/v1/predict", content=digits[0].read_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1


def test_attention_is_a_png_of_the_image_and_its_maps(client, digits):
    response = client.post("/v1/attention", files={"files": ("d.png", digits[0].read_bytes(), "image/png")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as picture:
        width, height = picture.size
    assert width > 2 * height > 100  # the image, then one column per map (rollout, class token)


def test_model_and_health(client, trained):
    info = client.get("/v1/model").json()
    assert info["model"] == "deit_pico_patch7_28" and info["classes"] == [str(d) for d in range(10)]
    assert info["input_size"] == 28 and info["weights"] == str(trained) and info["parameters"] > 10_000
    assert client.get("/healthz").json() == {"status": "ok"}


def truncated(digits):
    data = png(Image.new("L", (64, 64), 128).resize((300, 300)))
    return data[: len(data) // 2]


BAD = {
    "not an image": (lambda d: ("files", ("notes.png", b"just text", "image/png")), 422),
    "truncated": (lambda d: ("files", ("cut.png", truncated(d), "image/png")), 422),
    "empty": (lambda d: ("files", ("empty.png", b"", "image/png")), 422),
    "bomb": (lambda d: ("files", ("bomb.png", png(Image.new("1", (20_000, 20_000))), "image/png")), 413),
    "bomb under Pillow's limit": (
        lambda d: ("files", ("b.png", png(Image.new("1", (8_000, 8_000))), "image/png")),
        413,
    ),
    "wrong field": (lambda d: ("image", ("d.png", d[0].read_bytes(), "image/png")), 422),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_upload_is_a_4xx_line_and_the_next_request_is_served(client, digits, case):
    part, status = BAD[case]
    response = client.post("/v1/predict", files=[part(digits)])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error and "\n" not in error and "Traceback" not in error
    assert client.post("/v1/predict", files={"files": ("d.png", digits[0].read_bytes())}).status_code == 200


def test_too_large_and_wrong_content_type(trained, digits):
    model = deit.create_model(pretrained=trained)
    with TestClient(create_app(Model(model, "w"), max_bytes=1000)) as small:
        big = png(Image.effect_noise((64, 64), 50).convert("L"))
        assert len(big) > 1000
        response = small.post("/v1/predict", content=big, headers={"content-type": "image/png"})
        assert response.status_code == 413 and "1,000" in response.json()["error"]
        response = small.post("/v1/predict", content=b"{}", headers={"content-type": "application/json"})
        assert response.status_code == 415
        assert small.post(
            "/v1/predict", content=digits[0].read_bytes(), headers={"content-type": "image/png"}
        ).is_success


def test_concurrent_requests_share_batches():
    sizes = []

    def forward(batch):
        sizes.append(len(batch))
        return batch.flatten(1).sum(1).tolist()

    async def clients():
        batcher = Batcher(forward, max_batch=8, wait_ms=50)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher([torch.full((1, 2, 2), float(i))]) for i in range(20)))
        finally:
            await batcher.stop()

    results = asyncio.run(clients())
    assert [r[0] for r in results] == [4.0 * i for i in range(20)]  # each client its own answer
    assert sum(sizes) == 20 and max(sizes) == 8 and len(sizes) <= 4  # batches of up to 8, not 20 passes


def test_the_token_is_required(trained, digits):
    model = deit.create_model(pretrained=trained)
    with TestClient(create_app(Model(model, "w"), token="s3cret")) as locked:
        image = {"files": ("d.png", digits[0].read_bytes(), "image/png")}
        assert locked.post("/v1/predict", files=image).status_code == 401
        assert locked.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert locked.post("/v1/predict", files=image, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert locked.get("/healthz").status_code == 200  # for load balancers


def test_a_non_local_bind_needs_a_token_or_no_auth(trained, capsys):
    check_bind("127.0.0.1", None, False)
    check_bind("0.0.0.0", "t", False)
    check_bind("0.0.0.0", None, True)
    assert main(["serve", "--weights", str(trained), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--token" in err and "--no-auth" in err


def test_the_page_is_served_whole_with_nothing_from_elsewhere(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'type="file"' in page and "v1/predict" in page and "v1/attention" in page
    assert 'name="viewport"' in page  # laid out for a phone too
    assert "http://" not in page and "https://" not in page and "src=" not in page.replace("img.src =", "")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    onnx_file = tmp_path_factory.mktemp("onnx") / "student.onnx"
    assert main(["export", "--weights", str(trained), "-o", str(onnx_file)]) == 0
    return onnx_file


def test_the_onnx_backend_serves_an_export_alone_with_predicts_numbers(exported, trained, digits, capsys):
    """An exported file carries its class names and preprocessing: served by onnxruntime, its top-k are those of
    deit predict on the PyTorch weights, to the 1e-4 the export was checked to (on the logits: a softmax moves no
    probability by more than the largest logit change, times 1/2)."""
    from deit.serve import serving_model

    chosen = digits[::5]
    assert main(["predict", *map(str, chosen), "--weights", str(trained), "--json"]) == 0
    expected = [row["topk"] for row in map(json.loads, capsys.readouterr().out.splitlines())]
    with TestClient(create_app(Model(serving_model(str(exported), None, None), str(exported)))) as c:
        info = c.get("/v1/model").json()
        assert info["backend"] == "onnx" and info["attention"] is False
        assert info["classes"] == [str(d) for d in range(10)] and info["input_size"] == 28
        assert info["parameters"] == sum(p.numel() for p in deit.create_model(pretrained=trained).parameters())
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in chosen]
        served = [p["topk"] for p in c.post("/v1/predict", files=files).json()["predictions"]]
        assert len(served) == len(expected)
        for got, want in zip(served, expected):
            assert same_topk(got, want, tol=1e-4), (got, want)
        response = c.post("/v1/attention", files={"files": ("d.png", chosen[0].read_bytes(), "image/png")})
        assert response.status_code == 501 and "torch" in response.json()["error"]


def test_serve_refuses_what_its_backend_cannot_serve_in_one_line(exported, trained, tmp_path, capsys):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_bytes(b"just text")
    import onnx

    stripped = onnx.load(str(exported))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "plain.onnx"))
    hostile = onnx.load(str(exported))
    for prop in hostile.metadata_props:
        if prop.key == "deit_config":
            config = json.loads(prop.value)
            config["data"]["class_names"] = ["a", "b"]  # 2 names for 10 classes
            prop.value = json.dumps(config)
    onnx.save(hostile, str(tmp_path / "hostile.onnx"))
    cases = {
        ("--weights", str(trained), "--backend", "onnx"): "deit export",
        ("--weights", str(exported), "--backend", "torch"): "--backend onnx",
        ("--weights", str(not_onnx)): "cannot read",
        ("--weights", str(tmp_path / "plain.onnx")): "deit_config",
        ("--weights", str(tmp_path / "hostile.onnx")): "2 class names for 10 classes",
        ("--weights", str(tmp_path / "missing.onnx")): "not found",
    }
    for argv, words in cases.items():
        assert main(["serve", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, (argv, err)


def test_a_model_failing_on_a_batch_is_a_500_line_and_the_server_keeps_serving(trained, digits):
    model = deit.create_model(pretrained=trained)
    with TestClient(create_app(Model(model, "w"))) as c:
        image = {"files": ("d.png", digits[0].read_bytes(), "image/png")}
        saved = model.head.weight.detach().clone()
        with torch.no_grad():
            model.head.weight.fill_(float("inf"))  # damaged weights: outputs not finite
        response = c.post("/v1/predict", files=image)
        assert response.status_code == 500
        error = response.json()["error"]
        assert "not finite" in error and "\n" not in error
        with torch.no_grad():
            model.head.weight.copy_(saved)
        assert c.post("/v1/predict", files=image).status_code == 200


def test_the_attention_title_is_the_uploads_name_as_text(client, digits):
    """A file name is the picture's title, drawn as text: TeX markup or control characters in it are no fault."""
    for name in ("$\\frac{$.png", "a\x1b[2Jb.png", "x" * 300 + ".png"):
        response = client.post("/v1/attention", files={"files": (name, digits[0].read_bytes(), "image/png")})
        assert response.status_code == 200, (name, response.text)


def test_the_openapi_schema_documents_bodies_answers_and_errors(client):
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/v1/predict"]["post"]
    assert {"multipart/form-data", "image/*"} <= predict["requestBody"]["content"].keys()
    assert {"200", "401", "413", "415", "422", "500"} <= predict["responses"].keys()
    answer = predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert "predictions" in schema["components"]["schemas"][answer]["properties"]
    attention = schema["paths"]["/v1/attention"]["post"]
    assert "image/png" in attention["responses"]["200"]["content"] and "501" in attention["responses"]
    assert "/v1/model" in schema["paths"] and "/" not in schema["paths"]


def test_the_other_commands_send_an_onnx_file_to_deit_serve(exported, digits, capsys):
    assert main(["predict", str(digits[0]), "--weights", str(exported)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "deit serve" in err


# The bounds on what a client sends (docs/serve.md, "Bounds"): each one gone past, and the answer.

TOKEN = "s3cret"


class Served:
    """A real `deit serve` process on a port of the system's choosing, with what it writes to stderr."""

    def __init__(self, weights, *flags):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deit", "serve", "--weights", str(weights), "--port", "0", "--threads", "1", *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True).start()
        found = self.wait_until(lambda: re.search(r"running on http://127\.0\.0\.1:(\d+)", self.log), 120)
        self.port = int(found.group(1))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_until(self, condition, seconds: float):
        """Polls `condition()` until it holds; fails if the process ends or `seconds` pass first."""
        deadline = time.monotonic() + seconds
        while not (result := condition()):
            assert self.process.poll() is None and time.monotonic() < deadline, self.log
            time.sleep(0.05)
        return result

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=60)

    def answered_healthz(self) -> None:
        with self.connect() as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert answer_of(connection)[0] == 200

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)


@pytest.fixture(scope="module")
def served(trained):
    server = Served(trained, "--token", TOKEN)
    yield server
    server.stop()


@contextlib.contextmanager
def listening(app):
    """`app` under uvicorn in a thread of this process (a bound passed to create_app, where the command sets it)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)


BOUNDARY = "b0undary"


def stalled_head(kind: str, token: str | None = None, length: int = 100_000) -> bytes:
    """A request's head announcing `length` bytes of a raw image or a multipart form, and the body's first 4 bytes:
    a client that then stops sending."""
    content_type = "image/png" if kind == "raw" else f"multipart/form-data; boundary={BOUNDARY}"
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    body = b"\x89PNG" if kind == "raw" else f"--{BOUNDARY}\r\n".encode()[:4]
    return head.encode() + body


def answer_of(connection: socket.socket) -> tuple[int, dict, bytes]:
    """The status, headers and body of the response on `connection`, read until the server closes it."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_a_stalled_body_is_cut_off_with_a_408_line(trained, kind):
    app = create_app(Model(deit.create_model(pretrained=trained), "w"), body_timeout_s=1.0)
    with listening(app) as port, socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        start = time.monotonic()
        connection.sendall(stalled_head(kind))
        status, headers, body = answer_of(connection)  # the server closes the connection after its answer
        waited = time.monotonic() - start
    assert status == 408 and headers["connection"] == "close" and 1.0 <= waited < 20, (status, waited)
    error = json.loads(body)["error"]
    assert "\n" not in error and "1 s" in error


def test_sigterm_stops_the_server_within_its_grace_whatever_a_client_does(trained):
    """A client that sent its head and 4 bytes of a 100,000-byte body, then nothing, stays connected: SIGTERM still
    ends the server within SHUTDOWN_GRACE_S (plus the interpreter's exit), the client hears 503, exit code 130."""
    server = Served(trained, "--token", TOKEN)
    try:
        with server.connect() as connection:
            connection.sendall(stalled_head("raw", TOKEN))
            server.answered_healthz()  # the loop has read the stalled request's head by the time it answers this
            server.process.send_signal(signal.SIGTERM)
            start = time.monotonic()
            code = server.process.wait(SHUTDOWN_GRACE_S + 15)
            stopped_in = time.monotonic() - start
            status, _, body = answer_of(connection)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert code == 130 and stopped_in < SHUTDOWN_GRACE_S + 15, (code, stopped_in, server.log)
    assert status == 503 and "stopping" in json.loads(body)["error"]
    assert "Traceback" not in server.log and server.log.rstrip().endswith("deit serve: interrupted"), server.log


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_a_client_gone_mid_body_leaves_one_log_line_and_no_traceback(served, kind):
    seen = served.log.count("closed the connection before")
    with served.connect() as connection:
        connection.sendall(stalled_head(kind, TOKEN))
        served.answered_healthz()  # the server is reading the body when the client goes
    served.wait_until(lambda: served.log.count("closed the connection before") > seen, 30)
    assert "Traceback" not in served.log and "Exception in ASGI" not in served.log, served.log


def test_more_files_than_the_limit_is_a_413_naming_it(client, digits):
    files = [("files", (f"{i}.png", digits[0].read_bytes(), "image/png")) for i in range(MAX_IMAGES + 1)]
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 413 and f"{MAX_IMAGES}" in response.json()["error"], response.text
    assert client.post("/v1/predict", files=files[:MAX_IMAGES]).status_code == 200


def test_a_body_without_a_length_is_refused_once_past_the_byte_limit(trained):
    """A chunked body states no length up front: it is counted as it arrives and refused as soon as it passes the
    limit, not read whole into memory first (this client would send 64 MiB, well over any socket buffers)."""
    app = create_app(Model(deit.create_model(pretrained=trained), "w"), max_bytes=100_000)
    chunk = b"%x\r\n%s\r\n" % (2**16, b"\0" * 2**16)
    with listening(app) as port, socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sent, status = 0, "reset"
        with contextlib.suppress(ConnectionError):
            while sent < 64 * 2**20 and not select.select([connection], [], [], 0)[0]:
                connection.sendall(chunk)
                sent += 2**16
            status, _, body = answer_of(connection)
    # The server closes with the client's bytes unread in its socket: the kernel then resets the connection, which
    # may discard the 413 before it leaves (curl reports "connection reset"). Either way it stopped reading early.
    assert sent < 64 * 2**20 and status in (413, "reset"), (status, sent)
    if status == 413:
        assert "100,000" in json.loads(body)["error"]


def test_attention_takes_one_image(client, digits):
    image = ("files", ("d.png", digits[0].read_bytes(), "image/png"))
    response = client.post("/v1/attention", files=[image, image])
    assert response.status_code == 422 and "one image" in response.json()["error"]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--token", ""], "--token"),
        (["--token", "two words"], "--token"),
        (["--token", "s\u00e9cret"], "--token"),
        (["--port", "70000"], "65535"),
        (["--port", "-1"], "65535"),
        (["--port", "http"], "65535"),
    ],
)
def test_serve_refuses_a_token_no_client_can_send_and_a_port_out_of_range(trained, capsys, flags, words):
    with pytest.raises(SystemExit) as stopped:  # argparse's exit, or the command's
        sys.exit(main(["serve", "--weights", str(trained), *flags]))
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err


def test_with_a_token_only_the_page_the_schema_and_health_answer_without_it(trained):
    """The page must load in a browser, which sends no header on navigation (it asks for the token and sends it on
    its API calls); the schema is the same for every deit server and /docs fetches it without a header. Every
    other route, present or added later, needs the token."""
    app = create_app(Model(deit.create_model(pretrained=trained), "w"), token=TOKEN)
    with TestClient(app) as c:
        for route in app.routes:
            for method in sorted(route.methods - {"HEAD"}):
                response = c.request(method, route.path)
                public = route.path in PUBLIC_PATHS
                assert response.status_code == (200 if public else 401), (method, route.path, response.text)
        assert 'id="token"' in c.get("/").text
    assert {"/", "/healthz", "/openapi.json"} <= PUBLIC_PATHS
