"""`deit serve`'s page in a real headless browser (Debian's chromium, driven by Playwright): upload a digit, see the
right top-1 label and the heat maps drawn. Required when CI is set; elsewhere it skips, saying what is missing."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from deit.data import build_dataset

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def browser_or_skip():
    missing = []
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing.append("chromium (apt-get install chromium)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test needs {', '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)}")
    return chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_shows_a_digits_label_and_its_heat_maps(trained, tmp_path):
    chromium = browser_or_skip()
    from playwright.sync_api import sync_playwright

    val, _ = build_dataset("mnist5k", None, False)
    model = __import__("deit").create_model(pretrained=trained).eval()
    x = __import__("torch").from_numpy(val.images[:200]).float()
    # a digit the model gets right, so the page must show its true class
    import torch

    from deit.data.preprocess import preprocessing

    prep = preprocessing(model)
    with torch.inference_mode():
        batch = torch.stack([prep.transform(Image.fromarray(val.images[i], "L")) for i in range(len(x))])
        predicted = model(batch).argmax(1)
    index = next(i for i in range(len(x)) if int(predicted[i]) == int(val.targets[i]))
    digit = tmp_path / f"digit_{val.targets[index]}.png"
    Image.fromarray(val.images[index], "L").save(digit)

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "deit", "serve", "--weights", str(trained), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "healthz", timeout=1)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 480, "height": 800})  # a phone's width
            page.goto(url)
            page.wait_for_function("document.getElementById('about').textContent.includes('classes')")
            page.set_input_files("#pick", str(digit))
            page.wait_for_selector(".card img.maps", timeout=30_000)
            page.wait_for_function("document.querySelector('.card img.maps').naturalWidth > 0")
            top1 = page.get_attribute(".card", "data-top1")
            bars = page.locator(".card .row").count()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
            browser.close()
        assert top1 == str(val.targets[index]) and bars == 5
    finally:
        server.terminate()
        server.wait(timeout=10)
