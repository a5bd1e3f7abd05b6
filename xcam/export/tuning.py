"""INT8 chosen by measurement: every quantization preset on every installed runtime, timed and
checked against ONNX Runtime FP32 on held-out images, on the CPU at hand.

:func:`tune_int8` makes the INT8 files (:func:`xcam.export.quantize.ensure_int8`), runs FP32 and
each INT8 file on ONNX Runtime and, when installed, OpenVINO, measures the deviation of every
candidate from ONNX Runtime FP32 on the held-out images
(:func:`xcam.export.parity.output_deviation`) and its images/s per batch size (interleaved
rounds, so load from other processes hits every candidate alike; medians), then lets
:func:`xcam.export.quantize.choose` keep the fastest within the budget. The result is recorded
beside the FP32 file for this CPU (:func:`xcam.export.quantize.write_selection`) and in each
INT8 file's metadata (``xcam.int8_measurement``: CPU model, ISA flags, speed-ups, accuracy,
whether it was kept and why).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xcam.core.cpu import cpu_info
from xcam.export.quantize import (
    FP32,
    PRESETS,
    Budget,
    Candidate,
    Selection,
    choose,
    ensure_int8,
    write_selection,
)


def available_runtimes() -> list[str]:
    """``onnxruntime``, plus ``openvino`` when it is installed."""
    from xcam.export.openvino_runtime import openvino_available

    return ["onnxruntime", *(["openvino"] if openvino_available() else [])]


def open_runtime(runtime: str, path: str | Path, threads: int | None = None) -> Any:
    """The classifier of ``path`` on ``runtime`` (CPU)."""
    if runtime == "onnxruntime":
        from xcam.export.runtime import OnnxClassifier

        return OnnxClassifier.from_path(path, "cpu", threads=threads)
    if runtime == "openvino":
        from xcam.export.openvino_runtime import OpenVinoClassifier

        return OpenVinoClassifier.from_path(path, "cpu", threads=threads)
    raise ValueError(f"unknown runtime {runtime!r}; valid: onnxruntime, openvino")


def time_interleaved(fns: dict[Any, Callable[[], Any]], rounds: int, warmup: int = 1,
                     settle: float = 0.01) -> dict[Any, float]:
    """Median seconds per call of each function: ``warmup`` rounds, then ``rounds`` rounds in
    which each runs once, in turn. Each round starts one function later than the previous one
    and calls are ``settle`` seconds apart, so no function always follows the same one: a
    runtime whose worker threads keep spinning after a call (OpenVINO's do) would otherwise
    slow whichever call comes next in every round."""
    keys = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[Any, list[float]] = {k: [] for k in keys}
    for i in range(rounds):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            time.sleep(settle)
            t0 = time.perf_counter()
            fns[key]()
            samples[key].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:160] if text else type(exc).__name__)


def tune_int8(fp32_path: str | Path, calibration: np.ndarray, held: np.ndarray, *,
              presets: Sequence[str] | None = None, runtimes: Sequence[str] | None = None,
              budget: Budget = Budget(), batch_sizes: Sequence[int] = (1, 16), rounds: int = 3,
              min_speedup: float = 1.0, calibration_source: str = "", held_source: str = "",
              threads: int | None = None, time_all: bool = False, log: Callable[[str], None] | None = None,
              ) -> tuple[Selection, dict[str, Any]]:
    """Measure every (runtime, preset) and keep the fastest within ``budget``; returns the
    selection and the recorded entry (also written beside the FP32 file and into the INT8 files).

    ``held`` must be images not used for calibration (accuracy is measured on them, and they
    are tiled to each batch size for timing). Batch 1 gets three times ``rounds``. Candidates
    outside the budget cannot be kept, so they are timed only with ``time_all``.
    """
    log = log or (lambda _msg: None)
    fp32_path = Path(fp32_path)
    presets = list(presets or PRESETS)
    runtimes = list(runtimes or available_runtimes())
    files: dict[str, Path] = {FP32: fp32_path}
    errors: dict[str, str] = {}
    for name in presets:
        t0 = time.perf_counter()
        try:
            files[name] = ensure_int8(fp32_path, calibration, PRESETS[name], limit=len(calibration))
            log(f"int8 {name}: {files[name].name} ({time.perf_counter() - t0:.1f}s)")
        except Exception as exc:  # noqa: BLE001 - a preset the quantizer cannot do is reported, not fatal
            errors[name] = f"quantization failed: {_first_line(exc)}"
            log(f"int8 {name}: {errors[name]}")
    candidates: dict[tuple[str, str], Candidate] = {}
    classifiers: dict[tuple[str, str], Any] = {}
    for runtime in runtimes:
        for preset in [FP32, *presets]:
            path = files.get(preset)
            cand = Candidate(runtime, preset, path.name if path else "", error=errors.get(preset, ""))
            candidates[(runtime, preset)] = cand
            if path is None:
                continue
            try:
                classifiers[(runtime, preset)] = open_runtime(runtime, path, threads)
            except Exception as exc:  # noqa: BLE001 - e.g. OpenVINO cannot compile one file
                cand.error = f"cannot open: {_first_line(exc)}"
    ref_key = ("onnxruntime", FP32)
    if ref_key not in classifiers:
        raise ValueError("tune_int8 needs the onnxruntime runtime (the reference)")
    reference = classifiers[ref_key].run(held)
    valid = classifiers[ref_key].valid_indices
    from xcam.export.parity import output_deviation

    for key, clf in list(classifiers.items()):
        try:
            candidates[key].accuracy = output_deviation(reference, clf.run(held), valid, held_source)
        except Exception as exc:  # noqa: BLE001
            candidates[key].error = f"cannot run: {_first_line(exc)}"
            del classifiers[key]
    if not time_all:
        for key in [k for k in classifiers if k != ref_key and budget.violation(candidates[k].accuracy)]:
            del classifiers[key]  # outside the budget: cannot be kept, not worth timing
    for b in batch_sizes:
        x = np.ascontiguousarray(np.concatenate([held] * -(-b // len(held)))[:b])
        n = rounds * 3 if b == 1 else rounds
        log(f"timing batch {b}: {len(classifiers)} candidates × {n} interleaved rounds")
        seconds = time_interleaved({k: (lambda c=c: c.predict(x)) for k, c in classifiers.items()}, n)
        for key, s in seconds.items():
            candidates[key].images_per_s[b] = b / s
    selection = choose(list(candidates.values()), budget, min_speedup)
    entry = _entry(selection, budget, batch_sizes, min_speedup, calibration_source or f"{len(calibration)} images",
                   held_source or f"{len(held)} images", rounds)
    classifiers.clear()
    write_selection(fp32_path, entry)
    _record_in_files(files, entry)
    return selection, entry


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("onnxruntime", "onnxruntime-gpu", "openvino", "onnx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def _entry(selection: Selection, budget: Budget, batch_sizes: Sequence[int], min_speedup: float,
           calibration_source: str, held_source: str, rounds: int) -> dict[str, Any]:
    def short(c: Candidate | None) -> dict[str, Any] | None:
        return None if c is None else {"runtime": c.runtime, "preset": c.preset, "backend": c.backend, "file": c.file}

    return {
        "cpu": cpu_info().to_dict(),
        "measured": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "budget": {"p95": budget.p95, "max": budget.max, "mean": budget.mean},
        "min_speedup": min_speedup, "batch_sizes": list(batch_sizes), "rounds": rounds,
        "calibration": calibration_source, "held_out": held_source,
        "versions": _versions(),
        "candidates": selection.rows, "chosen": short(selection.chosen), "int8": short(selection.int8),
        "reason": selection.reason,
    }


def _record_in_files(files: dict[str, Path], entry: dict[str, Any]) -> None:
    """Each INT8 file gets its own rows of the measurement (``xcam.int8_measurement``)."""
    from xcam.export.onnx_export import read_metadata, write_metadata

    kept = entry.get("int8") or {}
    for preset, path in files.items():
        if preset == FP32:
            continue
        rows = [r for r in entry["candidates"] if r["preset"] == preset]
        meta = read_metadata(path)
        meta["int8_measurement"] = json.dumps({
            "cpu": entry["cpu"], "measured": entry["measured"], "budget": entry["budget"],
            "held_out": entry["held_out"],
            "runtimes": {r["runtime"]: {"speedup_vs_onnx_fp32": r["speedup"], "accuracy": r["accuracy"],
                                        "verdict": r["verdict"]} for r in rows},
            "kept": kept.get("preset") == preset, "kept_runtime": kept.get("runtime") if kept.get("preset") == preset
            else None, "chosen_on_this_cpu": entry["reason"],
        })
        write_metadata(path, meta)
