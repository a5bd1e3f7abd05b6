"""Throughput of the chain (:mod:`xcam.chain`) through the CLI, side by side in one run; prints a
table and writes JSON.

(a) ``xcam score`` images/s, plain (probabilities only) vs ``--with-cams --boxes --cam-classes all
    --threshold 0`` (every class gets a CAM, a mask and boxes), and their ratio (target ≥ 0.7).
(b) ``xcam analyze`` images/s (JSON only, top-3 classes explained) and, with ``--baseline-ref REF``,
    the same command run from a temporary ``git worktree`` of REF (its own source, this venv's
    python with ``PYTHONPATH`` at the worktree): the speed-up versus that commit (target ≥ 3×).
(c) box coordinates of the default work grid (masks and boxes at the models' input resolution)
    vs full-resolution work (``--profile exact``), in process, on the same model: mean and max
    |Δ| in pixels of box corners over all findings, and the mean IoU of the two boxes.

Inputs: the NIH 1024² PNGs of the shared test data (``--data``, default ``$XCAM_TEST_DATA`` or
``../shared/data`` beside the repository), repeated through distinctly named symlinks to
``--images`` inputs (default 300; ``xcam score`` reads them from a list file, ``xcam analyze``
from their folder). Model: densenet121 with random weights (seeded) on ONNX Runtime.

Every measurement is a subprocess of the CLI (``python -m xcam.cli``), and the commands are
interleaved: ``--rounds`` rounds, each running every command once on its own slice of the inputs,
so that a shared machine's changing load hits all of them alike. Model loading (with random
weights: an ONNX export in every process) is excluded from the rates: ``xcam score`` reports its
own rate after loading, and for ``xcam analyze`` (both versions) the rate is the slope of the
per-image ``analysis.json`` modification times (a least-squares fit of count against time after
the first tenth of the images), which needs nothing from either version but its files.

    .venv/bin/python benchmarks/chain_throughput.py [--images 300] [--rounds 2] \\
        [--baseline-ref 4cf6874] [--json chain_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("XCAM_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
MODEL = "densenet121"
SCORE_CAMS = ["--with-cams", "--boxes", "--cam-classes", "all", "--threshold", "0"]
ANALYZE = ["--json-only", "--backend", "onnx", "--top-k", "3", "--random-weights", "--quiet"]


# -- machine and inputs ---------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not Linux
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {"cpu_model": model, "logical_cores": os.cpu_count(), "usable_cores": usable,
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    return info


def data_dir(given: str | None) -> Path:
    if given:
        folder = Path(given)
    elif os.environ.get("XCAM_TEST_DATA"):
        folder = Path(os.environ["XCAM_TEST_DATA"])
    else:
        folder = REPO.parent / "shared" / "data"
    if not (folder / "nih" / "images").is_dir():
        sys.exit(f"error: {folder}/nih/images not found (give --data or set $XCAM_TEST_DATA)")
    return folder


def make_inputs(data: Path, folder: Path, n: int, rounds: int) -> tuple[list[Path], list[list[Path]]]:
    """``n`` distinctly named symlinks cycling through the NIH PNGs, split into ``rounds`` slices,
    each slice in its own folder (for ``xcam analyze``) with a list file (for ``xcam score``)."""
    images = sorted((data / "nih" / "images").glob("*.png"))
    if not images:
        sys.exit(f"error: no PNG in {data}/nih/images")
    slices: list[list[Path]] = []
    for r in range(rounds):
        sub = folder / f"round{r}"
        sub.mkdir(parents=True)
        links = []
        for i in range(r * n // rounds, (r + 1) * n // rounds):
            link = sub / f"x{i:06d}.png"
            link.symlink_to(images[i % len(images)].resolve())
            links.append(link)
        (folder / f"round{r}.txt").write_text("".join(f"{p}\n" for p in links))
        slices.append(links)
    return images, slices


# -- running the CLI ------------------------------------------------------------------------------
def cli_env(source: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(source) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("XCAM_OFFLINE", "1")
    return env


def run_cli(source: Path, args: Sequence[str], cwd: Path, log: Path) -> tuple[float, subprocess.CompletedProcess]:
    """``python -m xcam.cli ARGS`` with ``source`` first on the path; (wall seconds, the process)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xcam.cli", *args], cwd=cwd, env=cli_env(source),
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write_text(f"$ {' '.join(args)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}\n")
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"exit {proc.returncode}: xcam {' '.join(args[:1])}: {' | '.join(tail)} (log: {log})")
    return wall, proc


def score_once(source: Path, listing: Path, out: Path, cwd: Path, log: Path, extra: Sequence[str]) -> dict[str, Any]:
    args = ["score", "--input", str(listing), "--output", str(out), "--models", MODEL, "--random-weights",
            "--backend", "onnx", "--no-resume", "--no-progress", "--json", *extra]
    wall, proc = run_cli(source, args, cwd, log)
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    if summary["new_failed"]:
        raise RuntimeError(f"xcam score: {summary['new_failed']} images failed (log: {log})")
    return {"images": summary["scored"], "seconds": summary["wall_s"], "process_wall_s": round(wall, 2),
            "images_per_s": summary["images_per_s"]}


def steady_rate(times: Sequence[float], skip: float = 0.1) -> tuple[float, float]:
    """(images/s, seconds) from per-image completion times: the least-squares slope of the image
    count against time after the first ``skip`` of the images (warm-up, batching steps averaged)."""
    import numpy as np

    t = np.sort(np.asarray(times, dtype=np.float64))
    first = min(int(len(t) * skip), max(len(t) - 2, 0))
    t = t[first:]
    if len(t) < 2 or t[-1] - t[0] <= 0:
        return float("nan"), 0.0
    slope = float(np.polyfit(t - t[0], np.arange(len(t), dtype=np.float64), 1)[0])
    return slope, float(t[-1] - t[0])


def analyze_once(source: Path, folder: Path, out: Path, cwd: Path, log: Path) -> dict[str, Any]:
    args = ["analyze", "--input", str(folder), "--output-dir", str(out), "--models", MODEL, *ANALYZE]
    wall, _ = run_cli(source, args, cwd, log)
    files = sorted(out.glob("*/analysis.json"))
    expected = len(list(folder.glob("*.png")))
    if len(files) != expected:
        raise RuntimeError(f"xcam analyze wrote {len(files)} analysis.json files for {expected} images (log: {log})")
    rate, span = steady_rate([f.stat().st_mtime for f in files])
    out_m = {"images": len(files), "seconds": round(span, 2), "process_wall_s": round(wall, 2),
             "images_per_s": round(rate, 3)}
    try:  # each version's own per-stage seconds (decode, model, CAM, masks/boxes, writing), per image
        summary = json.loads((out / "analyze_summary.json").read_text())
        out_m["stage_ms_per_image"] = {k: round(1000 * float(v) / len(files), 1)
                                       for k, v in summary.get("seconds", {}).items()}
        out_m["model_load_s"] = round(float(summary.get("model_load_seconds", 0.0)), 1)
    except (OSError, ValueError, TypeError):
        pass
    return out_m


class Worktree:
    """A temporary ``git worktree`` of ``ref`` (removed again on exit)."""

    def __init__(self, ref: str, parent: Path) -> None:
        self.ref, self.path = ref, parent / "baseline-src"

    def __enter__(self) -> Path:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(self.path), self.ref],
                       check=True, capture_output=True, text=True)
        return self.path

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.path)],
                       capture_output=True, text=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True, text=True)


def imported_from(source: Path, cwd: Path) -> str:
    """Where ``import xcam`` resolves with ``source`` first on the path (a check of the set-up)."""
    proc = subprocess.run([sys.executable, "-c", "import xcam; print(xcam.__file__)"], cwd=cwd, env=cli_env(source),
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def commit_of(ref: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


# -- (c) work grid vs full resolution --------------------------------------------------------------
def box_difference(images: Sequence[Path]) -> dict[str, Any]:
    """Top boxes of every finding (all classes) with the default profile vs ``exact``, same model."""
    import numpy as np

    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions
    from xcam.chain.settings import ClassChoice, resolve_settings
    from xcam.core.config import load_config
    from xcam.core.manager import get_plugin_manager
    from xcam.core.metrics import box_iou

    pm = get_plugin_manager(load_config(None))
    load = LoadOptions(backend="onnx", random_init=True)
    choice = ClassChoice(all_classes=True, ground_truth=False)
    default = build_chain(pm, MODEL, resolve_settings(pm, "default"), choice, load=load)
    exact = build_chain(pm, MODEL, resolve_settings(pm, "exact"), choice, load=load)  # the same loaded model
    assert default.models[0].classifier is exact.models[0].classifier
    deltas: list[float] = []
    ious: list[float] = []
    only_one = neither = 0
    seconds = {"default": 0.0, "exact": 0.0}
    for path in images:
        item = default.prepare(str(path))
        a, b = default.run([item])[0], exact.run([item])[0]
        if a.error or b.error:
            raise RuntimeError(f"{path}: {a.error or b.error}")
        seconds["default"] += a.timings.seconds["mask_box"]
        seconds["exact"] += b.timings.seconds["mask_box"]
        for (_, fa), (_, fb) in zip(a.findings, b.findings):
            assert fa.pathology == fb.pathology
            if fa.box is None and fb.box is None:
                neither += 1
                continue
            if fa.box is None or fb.box is None:
                only_one += 1
                continue
            ba, bb = fa.box, fb.box
            deltas += [abs(ba.x - bb.x), abs(ba.y - bb.y), abs(ba.x2 - bb.x2), abs(ba.y2 - bb.y2)]
            ious.append(box_iou(ba, bb))
    d = np.asarray(deltas)
    n = len(images)
    return {
        "images": n, "image_size": "1024x1024", "work_grid_px": default.work_side(item.geometry) if n else None,
        "findings_compared": len(ious), "box_in_one_only": only_one, "no_box_in_either": neither,
        "corner_abs_delta_px": {"mean": round(float(d.mean()), 2), "median": round(float(np.median(d)), 2),
                                "p95": round(float(np.percentile(d, 95)), 2), "max": round(float(d.max()), 2)}
        if d.size else None,
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "median_iou": round(float(np.median(ious)), 4) if ious else None,
        "min_iou": round(float(np.min(ious)), 4) if ious else None,
        # the strategy picked another component (two of similar size): a different box, not a shifted one
        "iou_below_0.5": int(sum(v < 0.5 for v in ious)),
        "mask_box_ms_per_image": {k: round(1000 * v / max(n, 1), 1) for k, v in seconds.items()},
    }


# -- the run ------------------------------------------------------------------------------------
def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Images over seconds, summed over rounds (each round's own rate listed too)."""
    images = sum(r["images"] for r in runs)
    seconds = sum(r["images"] / r["images_per_s"] for r in runs if r["images_per_s"])
    out: dict[str, Any] = {"images": images, "images_per_s": round(images / seconds, 3) if seconds else None,
                           "per_round_images_per_s": [r["images_per_s"] for r in runs],
                           "process_wall_s": [r["process_wall_s"] for r in runs]}
    stages = [r["stage_ms_per_image"] for r in runs if r.get("stage_ms_per_image")]
    if stages:  # weighted by images
        weights = [r["images"] for r in runs if r.get("stage_ms_per_image")]
        out["stage_ms_per_image"] = {k: round(sum(s.get(k, 0.0) * w for s, w in zip(stages, weights)) / sum(weights), 1)
                                     for k in stages[0]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="inputs (the NIH PNGs repeated; default 300)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds, each on its own slice (default 2)")
    parser.add_argument("--data", default=None, help="test data folder (default $XCAM_TEST_DATA or ../shared/data)")
    parser.add_argument("--baseline-ref", default=None, metavar="REF",
                        help="also run xcam analyze from a git worktree of REF (e.g. 4cf6874) for the speed-up")
    parser.add_argument("--box-images", type=int, default=59, help="(c) distinct images compared (default 59)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: score, analyze, boxes")
    parser.add_argument("--json", default="chain_throughput.json", help="output JSON (default chain_throughput.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (outputs, logs)")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.images < 2 * args.rounds:
        parser.error("--images must be at least twice --rounds")

    data = data_dir(args.data)
    machine = cpu_info()
    print(f"CPU: {machine['cpu_model']}; {machine['usable_cores']} usable of {machine['logical_cores']} logical "
          f"cores; OMP_NUM_THREADS={machine['omp_num_threads']}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="xcam-chain-bench-"))
    result: dict[str, Any] = {"machine": machine, "command": [sys.executable, *sys.argv], "images": args.images,
                              "rounds": args.rounds, "model": f"{MODEL} (random weights, seeded) on ONNX Runtime",
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        unique, slices = make_inputs(data, tmp / "inputs", args.images, args.rounds)
        work = tmp / "cwd"
        work.mkdir()
        result["source"] = {"current": imported_from(REPO, work), "current_commit": commit_of("HEAD") + " + working tree"}
        measures: dict[str, list[dict[str, Any]]] = {}
        steps: list[tuple[str, Any]] = []
        if "score" not in skip:
            steps += [
                ("score_plain", lambda r, src: score_once(src, tmp / "inputs" / f"round{r}.txt",
                                                          tmp / f"score_plain_{r}.csv", work,
                                                          tmp / f"score_plain_{r}.log", [])),
                ("score_cams_boxes", lambda r, src: score_once(src, tmp / "inputs" / f"round{r}.txt",
                                                               tmp / f"score_cams_{r}.csv", work,
                                                               tmp / f"score_cams_{r}.log", SCORE_CAMS)),
            ]
        if "analyze" not in skip:
            steps.append(("analyze", lambda r, src: analyze_once(src, tmp / "inputs" / f"round{r}", tmp / f"an_{r}",
                                                                 work, tmp / f"analyze_{r}.log")))
        baseline = None
        if args.baseline_ref and "analyze" not in skip:
            baseline = Worktree(args.baseline_ref, tmp)
        with baseline if baseline is not None else _null() as base_src:
            if base_src is not None:
                where = imported_from(base_src, work)
                if not where.startswith(str(base_src)):
                    raise RuntimeError(f"the baseline imports xcam from {where}, not from its worktree")
                result["source"]["baseline"] = where
                result["source"]["baseline_commit"] = commit_of(args.baseline_ref)
                steps.append(("analyze_baseline",
                              lambda r, src: analyze_once(base_src, tmp / "inputs" / f"round{r}", tmp / f"an0_{r}",
                                                          work, tmp / f"analyze0_{r}.log")))
            for r in range(args.rounds):
                order = steps[r % len(steps):] + steps[: r % len(steps)] if steps else []  # rotate the order
                for name, step in order:
                    print(f"round {r + 1}/{args.rounds}: {name} ({len(slices[r])} images) ...", end=" ", flush=True)
                    try:
                        m = step(r, REPO)
                    except RuntimeError as exc:
                        print(f"FAILED: {exc}", flush=True)
                        measures.setdefault(name, []).append({"error": str(exc)})
                        continue
                    print(f"{m['images_per_s']:.2f} images/s (process {m['process_wall_s']:.0f} s)", flush=True)
                    measures.setdefault(name, []).append(m)
        agg: dict[str, Any] = {}
        for name, runs in measures.items():
            good = [m for m in runs if "error" not in m]
            agg[name] = aggregate(good) if good else {"error": runs[0]["error"]}
            if len(good) < len(runs):
                agg[name]["errors"] = [m["error"] for m in runs if "error" in m]
        result["measurements"] = agg
        rate = lambda k: (agg.get(k) or {}).get("images_per_s")  # noqa: E731
        if rate("score_plain") and rate("score_cams_boxes"):
            result["score_ratio"] = {"value": round(rate("score_cams_boxes") / rate("score_plain"), 3), "target": 0.7}
        if rate("analyze") and rate("analyze_baseline"):
            result["analyze_speedup"] = {"value": round(rate("analyze") / rate("analyze_baseline"), 2), "target": 3.0,
                                         "baseline_ref": args.baseline_ref}
        if "boxes" not in skip:
            print(f"(c) default work grid vs --profile exact on {min(args.box_images, len(unique))} images ...",
                  flush=True)
            result["box_difference"] = box_difference(unique[: args.box_images])
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    print(f"\nwritten: {args.json}")
    return 0


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"CPU: {m['cpu_model']} ({m['usable_cores']} usable cores, OMP_NUM_THREADS={m['omp_num_threads']}); "
             f"{result['model']}; {result['images']} NIH 1024² inputs in {result['rounds']} interleaved round(s)",
             "", f"  {'measurement':<34} {'images/s':>9} {'images':>7}  per round"]
    labels = {"score_plain": "score (plain)", "score_cams_boxes": "score --with-cams --boxes (all)",
              "analyze": "analyze (json, top-3)", "analyze_baseline": "analyze @ baseline"}
    for key, label in labels.items():
        a = result.get("measurements", {}).get(key)
        if a is None:
            continue
        if "error" in a:
            lines.append(f"  {label:<34} {'failed':>9}  {a['error'][:80]}")
            continue
        rounds = ", ".join(f"{v:.2f}" for v in a["per_round_images_per_s"])
        stages = a.get("stage_ms_per_image")
        stage_text = ("  [ms/image: " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()) + "]") if stages else ""
        lines.append(f"  {label:<34} {a['images_per_s']:>9.2f} {a['images']:>7}  {rounds}{stage_text}")
    lines.append("")
    if "score_ratio" in result:
        r = result["score_ratio"]
        lines.append(f"  score with CAMs+boxes / plain: {r['value']:.3f} (target >= {r['target']})")
    if "analyze_speedup" in result:
        r = result["analyze_speedup"]
        lines.append(f"  analyze speed-up vs {r['baseline_ref']}: {r['value']:.2f}x (target >= {r['target']:.0f}x)")
    b = result.get("box_difference")
    if b:
        d = b["corner_abs_delta_px"] or {}
        lines += [
            f"  boxes, work grid ({b['work_grid_px']} px) vs full resolution (--profile exact): "
            f"{b['findings_compared']} findings on {b['images']} images ({b['image_size']})",
            f"    |Δ corner| px: mean {d.get('mean')}, median {d.get('median')}, p95 {d.get('p95')}, max {d.get('max')}",
            f"    IoU: mean {b['mean_iou']}, median {b['median_iou']}, min {b['min_iou']}; "
            f"below 0.5 (another component picked): {b['iou_below_0.5']}; box in one only: {b['box_in_one_only']}",
            f"    masks+boxes: {b['mask_box_ms_per_image']['default']} vs {b['mask_box_ms_per_image']['exact']} ms/image",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
