"""The fast path: ONNX export (:mod:`~xcam.export.onnx_export`), ONNX Runtime sessions and
execution providers (:mod:`~xcam.export.runtime`, :mod:`~xcam.export.providers`), static INT8
quantization (:mod:`~xcam.export.quantize`), the exact one-pass all-class Grad-CAM
(:mod:`~xcam.export.fast_cam`) and opt-in CUDA speed-ups of the PyTorch backend
(:mod:`~xcam.export.torch_accel`). See ``docs/fast-path.md`` and ``docs/gpu.md``.

Nothing here imports torch or onnxruntime at import time.
"""
