#!/usr/bin/env bash
# xcam GPU check: one prepared script for a machine with an NVIDIA GPU. Installs nothing.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (from the repository root; default OUT_DIR: $OUT or ./gpu-check)
#
# Steps, each under its own timeout (about 6 minutes in all):
#   1. environment: nvidia-smi, Python packages, onnxruntime's execution providers     -> env.json, gpu.txt
#   2. GPU parity tests (tests/test_gpu.py: GPU vs CPU probabilities and CAMs, autocast
#      fp16/bf16 + channels_last, ORT CUDA/TensorRT when onnxruntime-gpu is present)    -> gpu-tests.{txt,xml}
#   3. GPU bench: torch fp32, autocast fp16 / bf16 + channels_last, ONNX Runtime on the
#      best provider it has (recorded; a CPU-only onnxruntime is reported, not hidden)  -> bench-gpu.{json,png,txt}
#   4. torch.compile (opt-in, unmeasured elsewhere), batch 16 only                      -> bench-compile.{json,txt}
#   5. summary of all of it                                                             -> gpu-check.json
#
# xcam needs torchxrayvision (and, for CAM methods, grad-cam + ttach) importable: where the GPU
# machine lacks them, put their wheels on PYTHONPATH before running this (docs/gpu.md shows how).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$ROOT/gpu-check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="python3"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XCAM_HOME="${XCAM_HOME:-$OUT_DIR/xcam_home}"   # random bench weights, ONNX cache, TensorRT engines
export XCAM_OFFLINE=1
cd "$ROOT"
START=$(date +%s)

echo "[1/5] environment"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi failed") \
  > "$OUT_DIR/gpu.txt" 2>&1
"$PY" - > "$OUT_DIR/env.json" 2>&1 <<'EOF'
import importlib, json, platform
mods = ["torch", "torchvision", "onnxruntime", "onnx", "onnxscript", "torchxrayvision", "pytorch_grad_cam",
        "ttach", "pydicom", "pluggy", "cv2", "psutil", "rich", "matplotlib", "click", "skimage", "xcam"]
out = {"python": platform.python_version(), "modules": {}}
for name in mods:
    try:
        out["modules"][name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception as exc:  # noqa: BLE001
        out["modules"][name] = f"MISSING ({type(exc).__name__}: {str(exc)[:120]})"
try:
    import onnxruntime as ort
    out["onnxruntime_providers"] = ort.get_available_providers()
except Exception as exc:  # noqa: BLE001
    out["onnxruntime_providers"] = f"unavailable: {exc}"
try:
    import torch
    out["cuda"] = torch.cuda.is_available()
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out["torch_cuda"] = torch.version.cuda
except Exception as exc:  # noqa: BLE001
    out["cuda"] = f"unavailable: {exc}"
print(json.dumps(out, indent=2))
EOF
cat "$OUT_DIR/env.json"

echo "[2/5] GPU parity tests"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py -rs \
  --junitxml "$OUT_DIR/gpu-tests.xml" > "$OUT_DIR/gpu-tests.txt" 2>&1
TESTS_RC=$?
tail -n 15 "$OUT_DIR/gpu-tests.txt"

echo "[3/5] GPU bench (torch fp32 / fp16 / bf16 + channels_last, ONNX Runtime)"
COLUMNS=200 timeout 180 "$PY" -m xcam.cli bench --devices cuda --backends torch,torch-amp,torch-bf16,onnx \
  --batch-sizes 1,16,64 --sections throughput --output "$OUT_DIR/bench-gpu.json" > "$OUT_DIR/bench-gpu.txt" 2>&1
BENCH_RC=$?
tail -n 30 "$OUT_DIR/bench-gpu.txt"

echo "[4/5] torch.compile (reduce-overhead: CUDA graphs), batch 16"
COLUMNS=200 timeout 120 "$PY" -m xcam.cli bench --devices cuda --backends torch,torch-compile --batch-sizes 16 \
  --sections throughput --output "$OUT_DIR/bench-compile.json" > "$OUT_DIR/bench-compile.txt" 2>&1
COMPILE_RC=$?
tail -n 12 "$OUT_DIR/bench-compile.txt"

echo "[5/5] summary"
"$PY" - "$OUT_DIR" "$TESTS_RC" "$BENCH_RC" "$COMPILE_RC" "$START" > "$OUT_DIR/gpu-check.json" <<'EOF'
import json, sys, time, xml.etree.ElementTree as ET
from pathlib import Path
out_dir, tests_rc, bench_rc, compile_rc, start = Path(sys.argv[1]), *map(int, sys.argv[2:6])
def load(name):
    try:
        return json.loads((out_dir / name).read_text())
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}
summary = {"env": load("env.json"), "steps": {"tests_rc": tests_rc, "bench_rc": bench_rc, "compile_rc": compile_rc}}
try:
    suite = ET.parse(out_dir / "gpu-tests.xml").getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["tests"]["skipped_reasons"] = sorted({s.get("message", "") for s in suite.iter("skipped")})
except Exception as exc:  # noqa: BLE001
    summary["tests"] = {"error": str(exc)}
for key, name in (("bench", "bench-gpu.json"), ("compile", "bench-compile.json")):
    data = load(name)
    summary[key] = {"throughput": [{k: r.get(k) for k in ("backend", "device", "provider", "batch_size", "p50_ms",
                                                            "images_per_s", "peak_gpu_mb")}
                                   for r in data.get("throughput", [])],
                    "skipped": data.get("skipped"), "machine": data.get("machine", {}).get("gpu"),
                    "error": data.get("error")}
summary["seconds"] = round(time.time() - start, 1)
print(json.dumps(summary, indent=2))
EOF
cat "$OUT_DIR/gpu-check.json" | head -n 60
echo "done in $(( $(date +%s) - START ))s; results in $OUT_DIR"
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
