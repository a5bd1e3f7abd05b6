"""ROAD's imputation: pytorch-grad-cam's ``NoisyLinearImputer`` vs xcam's ``FastLinearImputer``
(the same equations built in one vectorized pass), side by side in one run; prints a table.

Per (image, map) pair, ``perturbed_copies`` makes 18 imputed copies (MoRF and LeRF at 10, 20, ...,
90 %). Inputs: NIH PNGs of the shared test data (``--data``, default ``$XCAM_TEST_DATA`` or
``../shared/data``) at the model size (224 px, xrv scaling), each with a smooth map (a Gaussian
blob at a random place plus noise, like a CAM). The two imputers alternate pair by pair, so a shared
machine's load hits both alike; the outputs are compared too (largest |difference|).

    .venv/bin/python benchmarks/road_imputer.py [--pairs 4] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def _images(data: Path, n: int, size: int) -> list[np.ndarray]:
    from xcam.core.imageio import load_image
    from xcam.core.preprocess import preprocess

    files = sorted(data.rglob("*.png"))[:n]
    if not files:
        raise SystemExit(f"no PNG images under {data} (set --data)")
    return [preprocess(load_image(f), size)[0].astype(np.float32) for f in files]


def _maps(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.12 * size) ** 2))
        out.append((blob + 0.05 * rng.random((size, size))).astype(np.float32))
    return out


def main() -> None:
    import torch
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    import xcam.evaluation.faithfulness as faithfulness
    from xcam.evaluation.saliency_report import cpu_model

    default_data = os.environ.get("XCAM_TEST_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--data", default=default_data)
    args = parser.parse_args()

    images, maps = _images(Path(args.data), args.pairs, args.size), _maps(args.pairs, args.size)
    seconds = {"library": [], "fast": []}
    worst = 0.0
    for image, cam in zip(images, maps):
        outputs = {}
        for name, imputer in (("library", NoisyLinearImputer), ("fast", faithfulness.FastLinearImputer)):
            t0 = time.perf_counter()
            outputs[name] = faithfulness.perturbed_copies(image, cam, seed=0, imputer=imputer)
            seconds[name].append(time.perf_counter() - t0)
        worst = max(worst, float(np.abs(outputs["library"] - outputs["fast"]).max()))
    lib, new = np.mean(seconds["library"]), np.mean(seconds["fast"])
    print(f"CPU: {cpu_model()}, torch threads {torch.get_num_threads()}; {args.pairs} pairs at {args.size} px, "
          f"{len(faithfulness.DEFAULT_PERCENTILES) * 2} imputed copies each")
    print("| imputer | s per pair (mean) | min | max |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {np.mean(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    print(f"speed-up {lib / new:.2f}×; largest |library − fast| over all copies: {worst:.3g} "
          f"(inputs span ±1024)")


if __name__ == "__main__":
    main()
