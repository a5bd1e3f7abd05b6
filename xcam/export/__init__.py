"""The fast path: ONNX export (:mod:`~xcam.export.onnx_export`, with the all-class Grad-CAM
graph of :mod:`~xcam.export.fast_cam`), ONNX Runtime sessions and execution providers
(:mod:`~xcam.export.runtime`, :mod:`~xcam.export.providers`), static INT8 quantization
(:mod:`~xcam.export.quantize`, chosen per CPU by :mod:`~xcam.export.tuning`), OpenVINO
(:mod:`~xcam.export.openvino_runtime`), parity reports (:mod:`~xcam.export.parity`), opt-in CUDA
speed-ups of the PyTorch backend (:mod:`~xcam.export.torch_accel`) and the one loader of every
backend (:func:`xcam.export.backends.load_classifier`). See ``docs/fast-path.md`` and ``docs/gpu.md``.

Inside the package, imports go one way (the ``export-layers`` contract in pyproject.toml):
``backends`` → ``tuning`` (INT8 chosen by measurement) → ``parity`` | ``quantize`` |
``openvino_runtime`` → ``onnx_export`` | ``runtime`` | ``torch_accel`` → ``fast_cam`` | ``providers`` |
``samples``.

Nothing here imports torch or onnxruntime at import time.
"""
