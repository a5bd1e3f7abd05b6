"""Two PyTorch processes side by side on one machine: forward passes per second of each, with
PyTorch's default threads, with ``OMP_NUM_THREADS=1`` and with ``OMP_WAIT_POLICY=PASSIVE``, and one
process alone. Shows why README.md asks for fewer threads per process on a shared CPU.

    .venv/bin/python benchmarks/thread_contention.py --seconds 15 --size 128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

SETTINGS: dict[str, dict[str, str]] = {
    "default threads": {},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def worker(seconds: float, size: int) -> None:
    """Run MobileNetV3-small forward passes (batch 1) for ``seconds``; print passes per second."""
    import torch
    import torchvision

    model = torchvision.models.mobilenet_v3_small(num_classes=7).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model(x)
            n += 1
    print(f"{n / (time.perf_counter() - start):.1f}", flush=True)


def run(env_extra: dict[str, str], copies: int, seconds: float, size: int) -> list[str]:
    """Start ``copies`` workers at once with ``env_extra``; their passes per second."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    command = [sys.executable, __file__, "--worker", "--seconds", str(seconds), "--size", str(size)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return [p.communicate()[0].strip() for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.seconds, args.size)
        return
    from xcam.evaluation.saliency_report import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; MobileNetV3-small, {args.size} px, batch 1, "
          f"{args.seconds:g} s per run")
    for name, extra in SETTINGS.items():
        print(f"two processes, {name}: {' and '.join(run(extra, 2, args.seconds, args.size))} passes/s")
    for name in ("default threads", "OMP_WAIT_POLICY=PASSIVE"):
        print(f"one process alone, {name}: {run(SETTINGS[name], 1, args.seconds, args.size)[0]} passes/s")


if __name__ == "__main__":
    main()
