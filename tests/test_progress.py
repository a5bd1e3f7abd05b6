"""Progress without a terminal: plain lines, a few per run, never carriage returns."""

from __future__ import annotations

import io

from xcam.core.progress import LineProgress, progress_bar, track


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_terminal_gives_a_line_per_ten_percent(monkeypatch):
    monkeypatch.setattr("xcam.core.progress.LOG_MIN_SECONDS", 0.0)
    stream = io.StringIO()
    with progress_bar(200, "score", unit="image", stream=stream) as bar:
        assert isinstance(bar, LineProgress)
        for _ in range(200):
            bar.update(1)
            bar.set_postfix(loss="0.5")
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 11 and lines[0].startswith("score: 1/200") and lines[-1].startswith("score: 200/200 image (100%)") and "loss=0.5" in lines[-1]


def test_lines_are_rate_limited_but_the_last_is_always_printed():
    stream = io.StringIO()  # default minimum of seconds between lines: a fast loop prints little
    assert list(track(range(1000), desc="decode", stream=stream)) == list(range(1000))
    lines = stream.getvalue().splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("decode: 1000/1000")


def test_a_terminal_gets_a_tqdm_bar_and_disabled_prints_nothing():
    from tqdm import tqdm

    bar = progress_bar(10, "x", stream=FakeTerminal())
    assert isinstance(bar, tqdm)
    bar.close()
    quiet = io.StringIO()
    with progress_bar(10, "x", enabled=False, stream=quiet) as off:
        off.update(10)
    assert quiet.getvalue() == ""


def test_a_command_run_without_a_terminal_writes_no_carriage_returns(tmp_path):
    import subprocess
    import sys

    import cv2
    import numpy as np

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((64, 80), 60 * i + 40, np.uint8))
    proc = subprocess.run([sys.executable, "-m", "xcam.cli", "analyze", "--input", str(tmp_path), "--models",
                           "mobilenetv3", "--random-weights", "--json-only", "--top-k", "1", "--threshold", "0",
                           "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "analyze: 3/3 image (100%)" in proc.stderr
