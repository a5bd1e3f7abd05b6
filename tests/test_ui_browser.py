"""The web UI in a real browser: ``xcam ui`` on a free localhost port, driven by headless Chromium.

Uses Playwright's Python API with the system Chromium (``/usr/bin/chromium``, or ``$XCAM_CHROMIUM``);
Playwright's own browser download is never needed. Skips with a reason when Streamlit, Playwright
or Chromium is missing. Each server runs offline with its own empty ``$XCAM_HOME`` and weight
cache. Two pages: an upload with ``--random-weights``, and the first run on a fresh machine (no
weight files, a small ``xcam demo`` cache: its model and an example phantom with its box). Each
screenshot is saved under the test's tmp folder and its path printed. ``$XCAM_UI_SCREENSHOT`` names
an extra copy: the upload test's, then the first-run test's (which runs second, so with both the
first-run page is what stays there), unless ``$XCAM_UI_DEMO_SCREENSHOT`` names another path for it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the web UI needs Streamlit (pip install 'xcam[ui]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright (pip install playwright)")

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
START_TIMEOUT_S = 30
RESULT_TIMEOUT_S = 45


def find_chromium() -> str | None:
    """``$XCAM_CHROMIUM``, else the first Chromium/Chrome on ``PATH``."""
    explicit = os.environ.get("XCAM_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((found for name in names if (found := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(process: subprocess.Popen, port: int, log: Path) -> None:
    """Wait for Streamlit's health endpoint; fail with the server log if the server dies or hangs."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"xcam ui exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"xcam ui did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium not found (apt-get install chromium, or set $XCAM_CHROMIUM)")
    return path


class Server:
    """A running ``xcam ui``: its URL, its private temp folder, and :meth:`stop`. Offline, with
    ``tmp_path/xcam-home`` as ``$XCAM_HOME`` and an empty weight cache; ``args``: its options."""

    def __init__(self, tmp_path: Path, args: tuple[str, ...] = ("--random-weights", "--model", "mobilenetv3")) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp_path / "server.log"
        self.tmpdir = tmp_path / "server-tmp"  # the server's tempfile folder: uploads must land here only
        self.tmpdir.mkdir()
        env = {**os.environ, "XCAM_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.tmpdir),
               "XCAM_HOME": str(tmp_path / "xcam-home"), "XRV_CACHE_DIR": str(tmp_path / "xrv-cache")}
        env.pop("XCAM_WEIGHTS_DIR", None)
        command = [sys.executable, "-m", "xcam.cli", "ui", "--port", str(self.port), *args, "--max-upload-mb", "5"]
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def server(tmp_path):
    """``xcam ui`` with random weights and MobileNetV3 on a free localhost port."""
    running = Server(tmp_path)
    try:
        wait_healthy(running.process, running.port, running.log)
        yield running
    finally:
        running.stop()


def input_image(tmp_path: Path) -> Path:
    """A real NIH X-ray when the shared test data is present, else a synthetic one."""
    env = os.environ.get("XCAM_TEST_DATA")
    shared = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    real = shared / "nih" / "images" / "00000211_000.png"
    if real.is_file():
        return real
    import cv2
    import numpy as np

    yy, xx = np.mgrid[0:512, 0:512]
    blob = 60 + 0.3 * xx + 120 * np.exp(-(((xx - 300) / 40) ** 2 + ((yy - 200) / 50) ** 2))
    path = tmp_path / "phantom.png"
    cv2.imwrite(str(path), np.clip(blob, 0, 255).astype(np.uint8))
    return path


def test_upload_in_chromium_shows_the_heatmap(chromium, server, tmp_path):
    started = time.monotonic()
    image = input_image(tmp_path)
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1500, "height": 1900},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(server.url, timeout=START_TIMEOUT_S * 1000)
            page.get_by_text("Upload a chest X-ray").wait_for(timeout=START_TIMEOUT_S * 1000)
            page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(image))
            caption = page.get_by_text("P0 overlay ·").first
            caption.wait_for(timeout=RESULT_TIMEOUT_S * 1000)
            page.wait_for_function(
                """() => [...document.querySelectorAll('[data-testid="stImage"] img')]
                          .filter(img => img.complete && img.naturalWidth > 0).length >= 4""",
                timeout=RESULT_TIMEOUT_S * 1000,
            )
            page.get_by_text("JSON of this page").wait_for(timeout=RESULT_TIMEOUT_S * 1000)  # the last element
            page.locator(".vega-embed canvas, .vega-embed svg").first.wait_for()
            page.wait_for_function(  # the script run is over (Streamlit's "Stop" status is gone)
                """() => !document.querySelector('[data-testid="stStatusWidget"]')""", timeout=RESULT_TIMEOUT_S * 1000)
            page.wait_for_timeout(500)  # let the chart finish drawing
            shot = tmp_path / "xcam_ui.png"
            page.screenshot(path=str(shot))
            body = page.locator("body").inner_text()
        finally:
            context.close()
    (session,) = server.tmpdir.glob("xcam-ui-*")  # the session's private folder holds the upload
    assert [p.name for p in (session / "uploads").iterdir()] == [image.name]
    server.stop()
    assert not list(server.tmpdir.glob("xcam-ui-*")), "the session folder outlived the server"
    print(f"\nxcam ui screenshot: {shot}")
    if os.environ.get("XCAM_UI_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["XCAM_UI_SCREENSHOT"])
    assert "Unexpected error" not in body and "Traceback" not in body
    assert "Random weights (demo/test mode)" in body
    assert f"{image.name}" in body and "mobilenetv3" in body
    assert "Settings profile" in body and "Mask extractor" in body
    assert shot.stat().st_size > 50_000
    print(f"upload to heatmap and shutdown: {time.monotonic() - started:.1f} s")


# -- first run on a fresh machine: the demo's model and examples -------------------------------------
def make_demo_cache(home: Path) -> Path:
    """What ``xcam demo --fast`` caches, without training: six held-out phantoms with their box list
    (``<home>/demo/fast-test/heldout``) and a random-init MobileNetV3 checkpoint in ``xcam train``'s
    format (``run/best.pt``)."""
    import torch

    from xcam.core.labels import NO_FINDING
    from xcam.datasets.phantom import generate_phantoms
    from xcam.nets.mobilenet import MobileNetV3

    root = home / "demo" / "fast-test"
    phantoms = generate_phantoms(root / "heldout", n=6, size=128, seed=7)
    labels = [label for label in phantoms.image_counts if label != NO_FINDING]
    torch.manual_seed(0)
    model = MobileNetV3(arch="mobilenet_v3_small", input_size=128, labels=labels)
    (root / "run").mkdir(parents=True)
    torch.save(model.checkpoint_object(), root / "run" / "best.pt")
    return root


FIRST_RUN_TIMEOUT_S = 90  # the first analysis loads the model on a busy 2-core machine


def test_first_run_offline_shows_a_demo_example_with_metrics(chromium, tmp_path):
    from xcam.core.demo_assets import find_demo

    started = time.monotonic()
    root = make_demo_cache(tmp_path / "xcam-home")
    demo = find_demo(tmp_path / "xcam-home")
    assert demo is not None and demo.root == root
    example = demo.examples()[1]  # not the one the page opens with: the test picks it
    (label, box), *_ = demo.ground_truth(example)
    server = Server(tmp_path, args=())  # no --random-weights, no --model, no weight files
    wait = FIRST_RUN_TIMEOUT_S * 1000
    try:
        wait_healthy(server.process, server.port, server.log)
        with sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1500, "height": 2100},
            )
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.goto(server.url, timeout=START_TIMEOUT_S * 1000)
                page.get_by_text("P0 overlay ·").first.wait_for(timeout=wait)  # the first example, at once
                page.get_by_role("combobox", name="Example").click()  # pick another example phantom
                page.get_by_role("option").filter(has_text=example.name).first.click()
                page.get_by_text(f"Ground truth from the demo's box list: {label},").wait_for(timeout=wait)
                page.get_by_text(f"P0 overlay · {label}").first.wait_for(timeout=wait)
                page.get_by_text("Metrics against the ground truth").wait_for(timeout=wait)
                page.get_by_text("JSON of this page").wait_for(timeout=wait)  # the last element
                page.locator(".vega-embed canvas, .vega-embed svg").first.wait_for()
                page.wait_for_function(
                    """() => [...document.querySelectorAll('[data-testid="stImage"] img')]
                              .filter(img => img.complete && img.naturalWidth > 0).length >= 4""", timeout=wait)
                page.wait_for_function(
                    """() => !document.querySelector('[data-testid="stStatusWidget"]')""", timeout=wait)
                page.wait_for_timeout(1000)  # let the chart and the table finish drawing
                shot = tmp_path / "xcam_ui_first_run.png"
                page.screenshot(path=str(shot))
                body = page.locator("body").inner_text()
                table = page.locator('[data-testid="stDataFrame"]').first.text_content() or ""
                source = page.locator('[data-testid="stRadio"]').first.inner_text()
                weights = page.get_by_role("combobox", name="mobilenetv3 weights").input_value()
                picked = page.get_by_role("combobox", name="Example").input_value()
            finally:
                context.close()
    finally:
        server.stop()
    log = server.log.read_text()
    print(f"\nxcam ui first-run screenshot: {shot}")
    target = os.environ.get("XCAM_UI_DEMO_SCREENSHOT") or os.environ.get("XCAM_UI_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
    assert "Unexpected error" not in body and "Traceback" not in body, body[-2000:]
    assert "could not be downloaded" not in body and "not found" not in body
    assert "Random weights (demo/test mode)" not in body and "xcam demo --fast" not in body  # no hint: it works
    assert "Examples (demo phantoms)" in source
    assert weights == "demo model (trained by xcam demo)" and picked.startswith(f"{example.name} · {label}")
    assert f"{example.name} · " in body and "Predictions" in body and "Positive (≥ 0.5)" in body
    assert f"P0 overlay · {label}" in body and "box · " in body and "mask · " in body
    assert "Metrics against the ground truth" in body and "iou" in table and "mobilenetv3" in table
    assert "demo model and example phantoms from" in log
    assert shot.stat().st_size > 50_000
    print(f"first run (demo cache, start, example, metrics, shutdown): {time.monotonic() - started:.1f} s")
