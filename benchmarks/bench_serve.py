"""`deit serve` under load, on loopback: concurrent clients sending the 1,000 test digits, served with batching
(`--max-batch 32`) and one image at a time (`--max-batch 1`), against `deit predict` on the same images.

    python benchmarks/bench_serve.py                        # trains the demo's student briefly first
    python benchmarks/bench_serve.py --weights runs/x       # a model of your own (its test digits must fit it)

Each server is the real command (`python -m deit serve`, uvicorn, its access log) on 127.0.0.1 at a free port. At
each client count, the clients (asyncio, one aiohttp connection each: the load shares the server's cores, and this
client costs them least) share the 1,000 digits, one image (a PNG body) per request, after a warm-up of 64
requests; every answer is checked against `deit predict --json` for the same file (labels and probabilities to
2e-6: both sides round to 6 decimals). Prints images/s and p50/p99 latency per client count, batched against one
at a time and both against `deit predict` (the command, start-up included, and its `predict()` alone), and saves
benchmarks/results/bench_serve_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))  # runs from a checkout without an install
ENV = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
WARMUP = 64


def digit_files(folder: Path) -> list[Path]:
    """The 1,000 test digits of the demo's data set as PNG files in class folders."""
    from PIL import Image

    from deit.data import build_dataset

    val, _ = build_dataset("mnist5k", None, False)
    for i in range(len(val)):
        (folder / str(val.targets[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(val.images[i], "L").save(folder / str(val.targets[i]) / f"{i}.png")
    return sorted(folder.glob("*/*.png"))


def train_student(folder: Path, epochs: int) -> Path:
    """The demo's student (`deit_pico_patch7_28`) trained a few epochs: enough for answers worth checking."""
    from deit.config import TrainConfig, merge
    from deit.demo.plan import STUDENT, STUDENTS
    from deit.train import run

    settings = {**STUDENTS, "run.epochs": epochs, "model.model": STUDENT, "data.data_set": "mnist5k"}
    values, explicit = merge({}, {**settings, "run.seed": 0, "data.num_workers": 2, "run.output_dir": str(folder)})
    print(run(TrainConfig.from_dict(values, explicit)))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same_answer(got: list[dict], want: list[dict], tol: float = 2e-6) -> bool:
    """The same top-k: probabilities by rank within `tol`, and each label's probability within `tol` where both
    lists hold it (two classes within `tol` of each other may swap ranks between batch sizes)."""
    if len(got) != len(want):
        return False
    if any(abs(a["probability"] - b["probability"]) > tol for a, b in zip(got, want)):
        return False
    theirs = {t["label"]: t["probability"] for t in want}
    return all(abs(t["probability"] - theirs[t["label"]]) <= tol for t in got if t["label"] in theirs)


class Server:
    """`deit serve` in a process of its own, its log in a file."""

    def __init__(self, weights: Path, max_batch: int, log: Path, threads: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "deit", "serve", "--weights", str(weights), "--port", str(self.port)]
        command += ["--threads", str(threads)] if threads else []
        self.log = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [*command, "--max-batch", str(max_batch)], stdout=self.log, stderr=subprocess.STDOUT, env=ENV
        )

    def wait_ready(self, timeout: float = 120) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"deit serve stopped (exit {self.process.returncode}); see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"deit serve did not answer within {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def load(url: str, images: list[tuple[str, bytes]], clients: int) -> dict:
    """`clients` concurrent clients sharing `images`, one per request; latencies, answers and failures."""
    import aiohttp

    queue = list(reversed(images))
    latencies, answers, failures = [], {}, []

    async def client(http: aiohttp.ClientSession) -> None:
        while queue:
            name, data = queue.pop()
            start = time.perf_counter()
            try:
                async with http.post("/v1/predict", data=data, headers={"content-type": "image/png"}) as response:
                    body = await response.read()
            except aiohttp.ClientError as e:
                failures.append(f"{name}: {type(e).__name__}")
                continue
            latencies.append(time.perf_counter() - start)
            if response.status != 200:
                failures.append(f"{name}: HTTP {response.status} {body[:200]!r}")
                continue
            answers[name] = json.loads(body)["predictions"][0]["topk"]

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "latencies": latencies, "answers": answers, "failures": failures}


def measure(server: Server, images, expected: dict, clients: int) -> dict:
    asyncio.run(load(server.url, images[:WARMUP], min(clients, 8)))
    result = asyncio.run(load(server.url, images, clients))
    wrong = [name for name, topk in result["answers"].items() if not same_answer(topk, expected[name])]
    q = statistics.quantiles(result["latencies"], n=100, method="inclusive")
    return {
        "clients": clients,
        "images": len(images),
        "images_per_s": len(images) / result["seconds"],
        "p50_ms": 1000 * q[49],
        "p99_ms": 1000 * q[98],
        "errors": len(result["failures"]),
        "wrong": len(wrong),
        "first_errors": result["failures"][:3],
        "first_wrong": wrong[:3],
    }


def predict_baseline(weights: Path, folder: Path, files: list[Path]) -> tuple[dict, dict]:
    """`deit predict --json` on the images (the command, timed whole) and its `predict()` alone, in this process."""
    import deit
    from deit.predict import predict

    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "deit", "predict", str(folder), "--weights", str(weights), "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    )
    command_seconds = time.perf_counter() - start
    expected = {Path(row["path"]).name: row["topk"] for row in map(json.loads, done.stdout.splitlines())}
    model = deit.create_model(pretrained=weights)
    predict(model, files[:WARMUP])
    start = time.perf_counter()
    predict(model, files)
    function_seconds = time.perf_counter() - start
    rates = {"command": len(files) / command_seconds, "function": len(files) / function_seconds}
    return expected, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="a trained model (default: train the demo's student)")
    parser.add_argument("--epochs", type=int, default=3, help="of the student trained when no --weights")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="the server's compute threads (its default)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    from deit.benchmark import save_record
    from deit.demo.plan import STUDENT
    from deit.distributed import machine

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        files = digit_files(root / "digits")
        weights = Path(args.weights) if args.weights else train_student(root / "student", args.epochs)
        expected, predict_rates = predict_baseline(weights, root / "digits", files)
        images = [(p.name, p.read_bytes()) for p in files]
        rows = {}
        for label, max_batch in (("batched", args.max_batch), ("one at a time", 1)):
            server = Server(weights, max_batch, root / f"serve_{max_batch}.log", args.threads)
            try:
                server.wait_ready()
                rows[label] = [measure(server, images, expected, n) for n in args.clients]
            finally:
                server.stop()
            log_lines = (root / f"serve_{max_batch}.log").read_text().count("POST /v1/predict")
            print(f"{label}: the server logged {log_lines} predict requests")

    print(
        f"\ndeit predict on the {len(files)} digits: {predict_rates['command']:.0f} img/s (the command, start-up "
        f"included), {predict_rates['function']:.0f} img/s (predict() alone)"
    )
    print(f"{'clients':>8} {'server':>14} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'wrong':>6}")
    for label, table in rows.items():
        for r in table:
            print(
                f"{r['clients']:>8} {label:>14} {r['images_per_s']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r['errors']:>7} {r['wrong']:>6}"
            )
    ratios = {}
    for b, one in zip(rows["batched"], rows["one at a time"]):
        ratios[b["clients"]] = {
            "batched_vs_one_at_a_time": b["images_per_s"] / one["images_per_s"],
            "batched_vs_predict_command": b["images_per_s"] / predict_rates["command"],
            "batched_vs_predict_function": b["images_per_s"] / predict_rates["function"],
        }
        print(
            f"{b['clients']:>3} clients: batched {ratios[b['clients']]['batched_vs_one_at_a_time']:.2f}x one at a "
            f"time, {ratios[b['clients']]['batched_vs_predict_command']:.2f}x deit predict (command), "
            f"{ratios[b['clients']]['batched_vs_predict_function']:.2f}x its predict()"
        )
    failed = sum(r["errors"] + r["wrong"] for table in rows.values() for r in table)
    record = {
        "benchmark": f"bench_serve_threads{args.threads}" if args.threads else "bench_serve",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "weights": args.weights or f"the demo's student ({STUDENT}), {args.epochs} epochs",
        "max_batch": args.max_batch,
        "server_threads": args.threads or "default",
        "predict_images_per_s": predict_rates,
        "rows": rows,
        "ratios": ratios,
        "errors_and_wrong_answers": failed,
    }
    save_record(record, args.out)
    if failed:
        raise SystemExit(f"{failed} requests failed or were answered wrong")


if __name__ == "__main__":
    main()
