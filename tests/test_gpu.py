"""GPU acceleration.

Provider selection (TensorRT → CUDA → CPU), the stderr notes and the CUDA I/O-binding path run
everywhere (``onnxruntime.get_available_providers`` and the session are monkeypatched); the
parity tests (GPU vs CPU probabilities and CAMs) skip without CUDA. ``benchmarks/gpu_check.sh``
runs this file on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from xcam.export import providers as prov
from xcam.export.providers import CPU, CUDA, TRT

ALL = [TRT, CUDA, CPU]


def _names(specs):
    return [name for name, _ in specs]


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv("XCAM_ORT_PROVIDERS", raising=False)


# -- provider selection (runs everywhere) --------------------------------------------------
def test_cpu_device_uses_only_cpu():
    specs, note = prov.select_providers("cpu", ALL)
    assert _names(specs) == [CPU] and note is None


def test_auto_prefers_tensorrt_then_cuda_then_cpu():
    assert _names(prov.select_providers("auto", ALL)[0]) == [TRT, CUDA, CPU]
    assert _names(prov.select_providers("auto", [CUDA, CPU])[0]) == [CUDA, CPU]
    specs, note = prov.select_providers("auto", [CPU])
    assert _names(specs) == [CPU] and note is None  # auto is silent


def test_cuda_without_gpu_providers_says_so_in_one_line():
    specs, note = prov.select_providers("cuda", [CPU])
    assert _names(specs) == [CPU]
    assert "onnxruntime-gpu" in note and CPU in note and "\n" not in note


def test_cuda_with_cuda_only_is_silent():
    specs, note = prov.select_providers("cuda", [CUDA, CPU])
    assert _names(specs) == [CUDA, CPU] and note is None


def test_tensorrt_requested_but_missing():
    specs, note = prov.select_providers("tensorrt", [CUDA, CPU])
    assert _names(specs) == [CUDA, CPU] and TRT in note and CUDA in note


def test_env_override_and_missing_provider(monkeypatch):
    monkeypatch.setenv("XCAM_ORT_PROVIDERS", "cuda,cpu")
    specs, note = prov.select_providers("auto", [CPU])
    assert _names(specs) == [CPU] and CUDA in note
    specs, note = prov.select_providers("auto", [CUDA, CPU])
    assert _names(specs) == [CUDA, CPU] and note is None


def test_tensorrt_options_fp16_engine_cache_and_profiles(monkeypatch, tmp_path):
    monkeypatch.setenv("XCAM_HOME", str(tmp_path))
    monkeypatch.setattr(prov, "gpu_name", lambda device_id=0: "NVIDIA-H100")
    cache = prov.trt_cache_dir("densenet121--all--abc", 224, 32)
    assert cache.parent == tmp_path / "trt"
    assert "densenet121--all--abc" in cache.name and "s224" in cache.name and "b32" in cache.name
    assert cache.name.endswith("NVIDIA-H100")
    opts = prov.tensorrt_options(cache, "input", 224, max_batch=32)
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"]
    assert opts["trt_engine_cache_path"] == str(cache)
    assert opts["trt_profile_max_shapes"] == "input:32x1x224x224"
    specs, _ = prov.select_providers("cuda", ALL, trt=opts)
    assert specs[0] == (TRT, opts)


def _tiny(tmp_path):
    import torch

    from xcam.export.onnx_export import export_model
    from xcam.nets.mobilenet import MobileNetV3

    torch.manual_seed(0)
    model = MobileNetV3(arch="mobilenet_v3_small", input_size=32).eval()
    model.name, model.variant = "mobilenetv3", "tiny"
    return export_model(model, tmp_path / "tiny.onnx", exporter="legacy").path


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("gpu"))


def test_cuda_request_on_cpu_only_runtime(monkeypatch, tiny_onnx, capfd):
    from xcam.export.runtime import OnnxClassifier

    monkeypatch.setattr(prov, "available_providers", lambda: [CPU])
    clf = OnnxClassifier.from_path(tiny_onnx, device="cuda")
    err = capfd.readouterr().err.strip()
    assert clf.backend == f"onnx:{CPU}" and not clf.uses_gpu
    assert err.count("\n") == 0 and "using CPUExecutionProvider" in err


def test_available_providers_come_from_onnxruntime(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    assert prov.available_providers() == [CUDA, CPU]
    assert _names(prov.select_providers("cuda")[0]) == [CUDA, CPU]


def test_cuda_session_failure_falls_back_with_one_line(monkeypatch, tiny_onnx, capfd):
    """A listed GPU provider whose libraries fail to load: the next provider is used, one line."""
    import onnxruntime as ort

    from xcam.export.runtime import OnnxClassifier

    real = ort.InferenceSession

    def session(path, options, providers):
        if providers and providers[0][0] == CUDA:
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")
        return real(path, options, providers=providers)

    monkeypatch.setattr(prov, "available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", session)
    clf = OnnxClassifier.from_path(tiny_onnx, device="cuda")
    err = capfd.readouterr().err.strip()
    assert clf.backend == f"onnx:{CPU}"
    assert err.count("\n") == 0 and "libcudnn" in err


def test_silent_onnxruntime_fallback_is_reported(monkeypatch, tiny_onnx, capfd):
    """onnxruntime may drop a provider it cannot initialise with only a log warning: say so."""
    import onnxruntime as ort

    from xcam.export.runtime import OnnxClassifier

    real = ort.InferenceSession

    def session(path, options, providers):
        return real(path, options, providers=[p for p in providers if p[0] == CPU])

    monkeypatch.setattr(prov, "available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", session)
    clf = OnnxClassifier.from_path(tiny_onnx, device="cuda")
    err = capfd.readouterr().err.strip()
    assert clf.backend == f"onnx:{CPU}" and err.count("\n") == 0 and CUDA in err


def test_io_binding_path_on_gpu_providers(monkeypatch, tiny_onnx):
    """With a CUDA provider the classifier binds input and outputs on the device (faked here)."""
    import onnxruntime as ort

    from xcam.export.runtime import OnnxClassifier

    clf = OnnxClassifier.from_path(tiny_onnx, device="cpu")
    real_session = clf.session
    calls = []

    class FakeBinding:
        def __init__(self):
            self.outputs = []

        def bind_ortvalue_input(self, name, value):
            calls.append(("input", name, value.device))
            self.x = value.x

        def bind_output(self, name, device, device_id):
            calls.append(("output", name, device))
            self.outputs.append(name)

        def copy_outputs_to_cpu(self):
            return real_session.run(self.outputs, {"input": self.x})

    class FakeValue:
        def __init__(self, x, device):
            self.x, self.device = x, device

    class FakeSession:
        def io_binding(self):
            return FakeBinding()

        def run_with_iobinding(self, binding):
            calls.append(("run",))

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(lambda x, d, i: FakeValue(x, d)))
    clf.session, clf.uses_gpu = FakeSession(), True
    x = np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32) * 300
    probs = clf.predict(x)
    assert probs.shape == (2, 14)
    assert ("input", "input", "cuda") in calls and ("output", "probabilities", "cuda") in calls and ("run",) in calls
    clf.session, clf.uses_gpu = real_session, False
    np.testing.assert_allclose(clf.predict(x), probs, atol=1e-6)


# -- on a GPU (skipped without CUDA) ---------------------------------------------------------
def _cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.fixture(scope="module")
def gpu_models(pm):
    torch = _cuda()
    from xcam.export.samples import sample_batch

    torch.manual_seed(0)
    model = pm.classifier("densenet121").build(random_init=True)
    x, _ = sample_batch(4, 224)
    return torch, model, x


def test_gpu_torch_probabilities_and_cams_match_cpu(gpu_models):
    import copy

    from xcam.core.cam_math import fast_gradcam_torch
    from xcam.core.inference import TorchClassifier

    _torch, model, x = gpu_models
    cpu = TorchClassifier(copy.deepcopy(model), "cpu")
    gpu = TorchClassifier(copy.deepcopy(model), "cuda")
    assert gpu.in_graph_cams == cpu.in_graph_cams == frozenset({"gradcam"})
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), atol=1e-3)
    np.testing.assert_allclose(fast_gradcam_torch(gpu.model, x).cpu().numpy(),
                               fast_gradcam_torch(cpu.model, x).numpy(), atol=1e-3)
    gpu_probs, gpu_cams = gpu.predict_with_cams(x)  # what the chain calls: one pass, numpy out
    cpu_probs, cpu_cams = cpu.predict_with_cams(x)
    np.testing.assert_allclose(gpu_probs, cpu_probs, atol=1e-3)
    np.testing.assert_allclose(gpu_cams, cpu_cams, atol=1e-3)


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_gpu_autocast_channels_last_keeps_parity(gpu_models, amp):
    import copy

    from xcam.core.cam_math import fast_gradcam_torch
    from xcam.core.inference import TorchClassifier
    from xcam.export.torch_accel import AcceleratedTorchClassifier

    _torch, model, x = gpu_models
    ref = TorchClassifier(copy.deepcopy(model), "cpu")
    fast = AcceleratedTorchClassifier(copy.deepcopy(model), "cuda", amp=amp, channels_last=True)
    assert fast.in_graph_cams == frozenset({"gradcam"}) and fast.autograd_model is fast.model
    tol = 2e-2 if amp == "fp16" else 5e-2
    assert np.abs(fast.predict(x) - ref.predict(x)).max() < tol
    probs, cams = fast.predict_with_cams(x)
    assert np.abs(probs - ref.predict(x)).max() < tol
    assert np.abs(cams - fast_gradcam_torch(ref.model, x).numpy()).max() < 0.1


def test_gpu_onnxruntime_cuda_matches_cpu(gpu_models, tmp_path):
    import onnxruntime as ort

    from xcam.export.onnx_export import export_model
    from xcam.export.runtime import OnnxClassifier

    if CUDA not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (CPU-only onnxruntime installed)")
    _torch, model, x = gpu_models
    path = export_model(model, tmp_path / "d.onnx").path
    cpu = OnnxClassifier.from_path(path, "cpu")
    gpu = OnnxClassifier.from_path(path, "cuda")
    assert gpu.uses_gpu and gpu.in_graph_cams == frozenset({"gradcam"}) and gpu.autograd_model is None
    tol = 2e-2 if gpu.providers[0] == TRT else 1e-3  # TensorRT runs in FP16
    assert np.abs(gpu.predict(x) - cpu.predict(x)).max() < tol
    gpu_probs, gpu_cams = gpu.predict_with_cams(x)
    cpu_probs, cpu_cams = cpu.predict_with_cams(x)
    assert np.abs(gpu_probs - cpu_probs).max() < tol
    assert np.abs(gpu_cams - cpu_cams).max() < 0.05
