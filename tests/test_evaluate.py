"""``xcam evaluate``: the protocol's numbers on hand-made boxes, oracle CAMs injected as a plugin,
ensembles, label mapping, and a run on the real NIH files (skipped when they are absent)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from xcam.evaluation.protocol import BoxRecord, class_row, summarize

GT = (100.0, 100.0, 100.0, 50.0)


def _record(preds, gt=GT, label="Mass", image="a.png", hit=False) -> BoxRecord:
    r = BoxRecord(image, label, gt, 512, 512, preds=[(*p, 1.0) for p in preds], hit=hit)
    r.baselines = {"lung_field": (90.0, 90.0, 150.0, 80.0), "centre": (206.0, 231.0, 100.0, 50.0)}
    return r


def test_identical_box_is_localized_at_every_threshold():
    row = class_row([_record([GT], hit=True)])
    assert all(v == 1.0 for t, v in row["iobb"].items() if float(t) < 1)
    assert all(v == 1.0 for v in row["iou"].values())
    assert row["miou"] == pytest.approx(1.0) and row["pointing"] == 1.0
    assert all(v == 0.0 for v in row["afp"].values())


def test_disjoint_box_is_a_miss_and_a_false_positive():
    row = class_row([_record([(300.0, 300.0, 50.0, 50.0)])])
    assert all(v == 0.0 for v in row["iobb"].values()) and all(v == 0.0 for v in row["iou"].values())
    assert row["miou"] == 0.0
    assert all(v == 1.0 for v in row["afp"].values())  # one false box per image at every T


def test_nested_boxes_iobb_against_iou():
    inner = (125.0, 112.5, 50.0, 25.0)  # a quarter of the GT area, inside it
    row = class_row([_record([inner])])
    assert row["iobb"]["0.9"] == 1.0  # IoBB = |P ∩ G| / |P| = 1
    assert row["miou"] == pytest.approx(0.25)
    assert row["iou"]["0.2"] == 1.0 and row["iou"]["0.3"] == 0.0
    outer = (50.0, 50.0, 200.0, 150.0)  # contains the GT: IoBB = 5000 / 30000
    row = class_row([_record([outer])])
    assert row["iobb"]["0.1"] == 1.0 and row["iobb"]["0.25"] == 0.0
    assert row["miou"] == pytest.approx(5000 / 30000)


def test_any_of_several_boxes_counts_and_no_box_is_a_miss():
    row = class_row([_record([(300.0, 300.0, 50.0, 50.0), GT]), _record([], image="b.png")])
    assert row["iobb"]["0.5"] == 0.5 and row["iou"]["0.5"] == 0.5
    assert row["afp"]["0.25"] == 0.5  # one false box over two images


def test_summary_has_a_mean_row_and_both_baselines():
    records = [_record([GT], hit=True), _record([], label="Nodule", image="b.png")]
    s = summarize(records, {"Mass": 0.9}, order=["Nodule", "Mass"])
    assert list(s["classes"]) == ["Nodule", "Mass"]
    assert s["mean"]["pointing"] == 0.5 and s["mean"]["auc"] == 0.9
    assert s["baselines"]["centre"]["mean"]["iou"]["0.1"] == 0.0
    lung = s["baselines"]["lung_field"]["classes"]["Mass"]  # IoBB = 5000 / 12000
    assert lung["iobb"]["0.25"] == 1.0 and lung["iobb"]["0.5"] == 0.0 and lung["pointing"] == 1.0


def test_box_list_maps_infiltrate(tmp_path: Path):
    from xcam.core.nih import read_boxes

    path = tmp_path / "boxes.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Infiltrate,1,2,3,4\nb.png,Mass,5,6,7,8\n")
    boxes = read_boxes(path)
    assert [b.label for b in boxes] == ["Infiltration", "Mass"] and boxes[0].raw_label == "Infiltrate"
    assert boxes[1].box == (5.0, 6.0, 7.0, 8.0)


def test_lung_field_baseline_covers_the_lungs_of_a_phantom(phantom_set: Path):
    from xcam.core.imageio import load_image
    from xcam.evaluation.baselines import lung_field_box

    image = load_image(next((phantom_set / "images").glob("*.png")))
    x, y, w, h = lung_field_box(image.pixels)
    assert 0 <= x and 0 <= y and x + w <= image.width + 1e-6 and y + h <= image.height + 1e-6
    assert 0.2 < (w * h) / (image.width * image.height) < 0.8


# -- oracle CAMs through the plugin manager ------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory) -> Path:
    from xcam.datasets.phantom import generate_phantoms

    root = tmp_path_factory.mktemp("eval_phantoms")
    generate_phantoms(root, n=30, size=128, seed=17)
    return root


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    """A mobilenetv3 checkpoint (random weights) for the phantom labels, saved as xcam train saves."""
    import torch

    from xcam.datasets.phantom import CLASSES
    from xcam.nets.mobilenet import MobileNetV3

    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    torch.manual_seed(0)
    model = MobileNetV3(labels=list(CLASSES), arch="mobilenet_v3_small", input_size=64, cam_layer="net.features.8")
    torch.save(model.checkpoint_object(), path)
    return path


def oracle_plugin(phantom_set: Path, size: int, shift: float = 0.0):
    """A cam-method plugin that knows the answer: a Gaussian at every true box of the class
    (recognised by the preprocessed pixels), optionally shifted by ``shift`` of the image."""
    from xcam.core.hookspecs import hookimpl
    from xcam.core.imageio import load_image
    from xcam.core.preprocess import preprocess
    from xcam.core.types import CamMethodRegistration
    from xcam.datasets.phantom import CLASSES
    from xcam.core.nih import read_boxes

    boxes: dict[bytes, dict[str, list]] = {}
    for gt in read_boxes(phantom_set / "BBox_List_2017.csv"):
        array, geometry = preprocess(load_image(phantom_set / "images" / gt.image), size, "xrv")
        boxes.setdefault(array.tobytes(), {}).setdefault(gt.label, []).append(geometry.box_to_model(*gt.box))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5

    def compute(model, batch, class_indices, **options):
        out = []
        for x, k in zip(batch.numpy(), class_indices):
            cam = np.zeros((size, size))
            for bx, by, bw, bh in boxes.get(x.tobytes(), {}).get(CLASSES[k], []):
                cx, cy = (bx + bw / 2 + shift * size) % size, (by + bh / 2 + shift * size) % size
                sx, sy = max(bw / 4, 1.0), max(bh / 4, 1.0)
                cam = np.maximum(cam, np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2)))
            out.append(cam / cam.max() if cam.max() > 0 else cam)
        return np.asarray(out, dtype=np.float32)

    @hookimpl
    def xcam_cam_methods():
        yield CamMethodRegistration(name="oracle", compute=compute, description="test oracle")

    return types.SimpleNamespace(xcam_cam_methods=xcam_cam_methods)


def _evaluate(pm, phantom_set: Path, checkpoint: Path | list[Path], output: Path | None = None, **kw):
    """``xcam evaluate`` in process: the default profile with ``kw`` as command-line overrides
    (``method``, ``mask``, ``mask_options``, ``layers``, ``aug_smooth``)."""
    from xcam.chain.settings import Overrides
    from xcam.evaluation.run import EvalConfig, evaluate

    checkpoints = checkpoint if isinstance(checkpoint, list) else [checkpoint]
    montage = kw.pop("montage", 4)
    config = EvalConfig(imgpath=str(phantom_set / "images"), bbox_csv=str(phantom_set / "BBox_List_2017.csv"),
                        models=[f"mobilenetv3:{c}" for c in checkpoints], output=str(output) if output else None,
                        progress=False, overrides=Overrides(**kw), montage=montage)
    return evaluate(config, pm)


@pytest.fixture()
def fresh_pm():
    from xcam.core.config import XcamConfig
    from xcam.core.manager import get_plugin_manager

    return get_plugin_manager(XcamConfig(), entrypoints=False)


def test_oracle_cams_localize_almost_perfectly(fresh_pm, phantom_set: Path, random_checkpoint: Path, tmp_path: Path):
    fresh_pm.load_object(oracle_plugin(phantom_set, 64), name="oracle-test")
    result = _evaluate(fresh_pm, phantom_set, random_checkpoint, tmp_path / "eval", method="oracle",
                       mask="threshold", mask_options={"threshold": 0.5})
    mean = result.summary["mean"]
    assert mean["n_boxes"] == len(result.records) > 15
    assert mean["pointing"] > 0.85  # a miss only where one class has two boxes in one image
    assert mean["iobb"]["0.25"] > 0.85 and mean["iou"]["0.1"] > 0.85
    lung, centre = (result.summary["baselines"][k]["mean"] for k in ("lung_field", "centre"))
    assert mean["pointing"] > max(lung["pointing"], centre["pointing"])
    for name in ("results.json", "results.md", "per_box.csv", "accuracy_vs_threshold.png", "montage.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["summary"]["mean"]["pointing"] == pytest.approx(mean["pointing"])
    assert "**mean**" in (tmp_path / "eval" / "results.md").read_text()
    # 95 % bootstrap intervals (patients: the phantoms carry NIH names) and the per-box table for --compare
    assert saved["summary"]["bootstrap"]["resamples"] == 1000 and saved["summary"]["bootstrap"]["unit"] == "patient"
    ci = saved["summary"]["mean"]["ci"]["pointing"]
    assert ci["lower"] <= mean["pointing"] <= ci["upper"] and ci["lower"] < ci["upper"]
    assert len(saved["per_record"]["image"]) == len(result.records)
    mean_line = next(line for line in (tmp_path / "eval" / "results.md").read_text().splitlines()
                     if line.startswith("| **mean** |") and "/" not in line)
    assert f"{mean['pointing']:.3f} [{ci['lower']:.3f}, {ci['upper']:.3f}]" in mean_line


def test_shifted_oracle_does_not(fresh_pm, phantom_set: Path, random_checkpoint: Path, tmp_path: Path):
    from xcam.core.config import XcamConfig
    from xcam.core.manager import get_plugin_manager
    from xcam.evaluation.compare import compare_files

    fresh_pm.load_object(oracle_plugin(phantom_set, 64, shift=0.5), name="oracle-shifted")
    result = _evaluate(fresh_pm, phantom_set, random_checkpoint, tmp_path / "shifted", method="oracle",
                       mask="threshold", montage=0)
    mean = result.summary["mean"]
    assert mean["pointing"] < 0.3 and mean["iou"]["0.1"] < 0.3
    pm = get_plugin_manager(XcamConfig(), entrypoints=False)
    pm.load_object(oracle_plugin(phantom_set, 64), name="oracle-test")
    _evaluate(pm, phantom_set, random_checkpoint, tmp_path / "oracle", method="oracle", mask="threshold", montage=0)
    paired = compare_files(tmp_path / "shifted" / "results.json", tmp_path / "oracle" / "results.json")
    assert paired["verdicts"]["pointing"] == paired["verdicts"]["T(IoBB>0.25)"] == "B better"


def test_an_ensemble_of_one_model_twice_equals_the_model(fresh_pm, phantom_set: Path, random_checkpoint: Path,
                                                          tmp_path: Path):
    import shutil

    single = _evaluate(fresh_pm, phantom_set, random_checkpoint, method="gradcam", layers="model", aug_smooth=False)
    copy = Path(shutil.copyfile(random_checkpoint, tmp_path / "copy.pt"))  # the same weights under another name
    double = _evaluate(fresh_pm, phantom_set, [random_checkpoint, copy], method="gradcam", layers="model",
                       aug_smooth=False)
    assert [m["name"] for m in double.summary["models"]] == [f"mobilenetv3@{random_checkpoint}", f"mobilenetv3@{copy}"]
    boxes = lambda result: [[p[:4] for p in r.preds] for r in result.records]  # noqa: E731 (scores rescale)
    assert boxes(double) == boxes(single)  # the mean of two equal CAMs is the CAM
    assert double.summary["mean"]["pointing"] == single.summary["mean"]["pointing"]


def test_cam_options_reach_the_method(fresh_pm, phantom_set: Path, random_checkpoint: Path):
    from xcam.core.hookspecs import hookimpl
    from xcam.core.types import CamMethodRegistration

    seen: list[dict] = []

    def compute(model, batch, class_indices, **options):
        seen.append(options)
        return np.full((len(class_indices), 8, 8), 0.5, np.float32)

    class Recorder:
        @hookimpl
        def xcam_cam_methods(self):
            yield CamMethodRegistration(name="recorder", compute=compute)

    fresh_pm.load_object(Recorder(), name="recorder-test")
    _evaluate(fresh_pm, phantom_set, random_checkpoint, method="recorder", layers="model")
    # the default profile's test-time augmentation for mobilenetv3, on the checkpoint's CAM layer
    assert seen and all(o["aug_smooth"] is True and o["target_layer"] == "net.features.8" for o in seen)
    seen.clear()
    _evaluate(fresh_pm, phantom_set, random_checkpoint, method="recorder", layers="model", aug_smooth=False)
    assert seen and all(o["aug_smooth"] is False for o in seen)


def test_layer_fusion_and_unknown_method(fresh_pm, phantom_set: Path, random_checkpoint: Path):
    from xcam.core.errors import XcamError

    fused = _evaluate(fresh_pm, phantom_set, random_checkpoint, layers=["net.features.8", "net.features.12"],
                      aug_smooth=False)
    assert fused.summary["mean"]["n_boxes"] == len(fused.records)
    assert fused.summary["models"][0]["cam_layer"] == "net.features.8+net.features.12"
    with pytest.raises(XcamError, match="unknown cam method 'no-such-cam'"):
        _evaluate(fresh_pm, phantom_set, random_checkpoint, method="no-such-cam")


# -- the real NIH files ------------------------------------------------------------------------------
def test_evaluate_runs_on_the_real_nih_subset(shared_data: Path, tmp_path: Path, capsys):
    from xcam.cli import main

    nih = shared_data / "nih"
    try:
        main(["evaluate", "--imgpath", str(nih / "images"), "--bbox-csv", str(nih / "BBox_List_2017_subset.csv"),
              "--csvpath", str(nih / "Data_Entry_2017_subset.csv"), "--models", "mobilenetv3", "--random-weights",
              "--output", str(tmp_path / "eval"), "--quiet", "--montage", "2"])
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    out = capsys.readouterr().out
    assert "**mean**" in out and "class mean: pointing" in out
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    summary = saved["summary"]
    assert summary["images"]["found"] == 12 and len(saved["records"]) == 12
    assert "Infiltration" in summary["classes"] and "Infiltrate" not in summary["classes"]
    assert set(summary["classes"]) >= {"Cardiomegaly", "Nodule", "Mass"}
    assert summary["mean"]["auc"] is not None  # labels of the 59 images give per-class AUCs
    for r in saved["records"]:
        assert r["width"] == r["height"] == 1024


def test_unreadable_image_is_skipped_reported_and_recorded(phantom_set: Path, random_checkpoint: Path,
                                                           tmp_path: Path):
    import shutil
    import subprocess
    import sys

    images = tmp_path / "images"
    shutil.copytree(phantom_set / "images", images)
    names = sorted({line.split(",")[0] for line in (phantom_set / "BBox_List_2017.csv").read_text().splitlines()[1:]})
    broken = images / names[0]
    broken.write_bytes(broken.read_bytes()[:300])  # truncated PNG
    proc = subprocess.run(
        [sys.executable, "-m", "xcam.cli", "evaluate", "--imgpath", str(images),
         "--bbox-csv", str(phantom_set / "BBox_List_2017.csv"), "--weights", str(random_checkpoint),
         "--no-aug-smooth", "--quiet", "--montage", "0", "--output", str(tmp_path / "eval")],
        capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-1000:]  # the report is written, the status says it is incomplete
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: 1 image(s) could not be read (their boxes are not scored; listed above and in results.json)")
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and names[0] in skipped[0] and "corrupt" in skipped[0]
    assert "WARN" not in proc.stderr and "Traceback" not in proc.stderr  # no OpenCV noise
    summary = json.loads((tmp_path / "eval" / "results.json").read_text())["summary"]
    assert list(summary["images"]["unreadable"]) == [names[0]]
    assert "unreadable: 1" in (tmp_path / "eval" / "results.md").read_text()


def test_box_outside_its_image_is_reported_and_not_scored(fresh_pm, phantom_set: Path, random_checkpoint: Path,
                                                          tmp_path: Path):
    from xcam.chain.settings import Overrides
    from xcam.core.nih import read_boxes
    from xcam.evaluation.run import EvalConfig, evaluate

    lines = (phantom_set / "BBox_List_2017.csv").read_text().splitlines()
    first, second = lines[1].split(","), lines[2].split(",")
    first[2] = "4600"  # far outside the 128x128 phantom
    second[2] = str(128 - float(second[4]) + 1)  # overhangs by a pixel (rounding): clipped, still scored
    csv = tmp_path / "outside.csv"
    csv.write_text("\n".join([lines[0], ",".join(first), ",".join(second), *lines[3:6]]) + "\n")  # few: fast
    config = EvalConfig(imgpath=str(phantom_set / "images"), bbox_csv=str(csv), models=[f"mobilenetv3:{random_checkpoint}"],
                        output=str(tmp_path / "eval"), progress=False, montage=0, bootstrap=0,
                        overrides=Overrides(aug_smooth=False))
    result = evaluate(config, fresh_pm)
    n = len(read_boxes(csv))
    problem = (f"{csv}: ground-truth box {first[1]} (x=4600, y={float(first[3]):g}, w={float(first[4]):g}, "
               f"h={float(first[5]):g}) of {first[0]} lies outside the 128x128 image; not scored")
    assert result.summary["boxes"] == {"in_csv": n, "evaluated": n - 1, "excluded": [problem]}
    assert result.summary["mean"]["n_boxes"] == len(result.records) == n - 1
    assert all(r.gt[0] < 128 for r in result.records)
    clipped = [r.gt for r in result.records if r.image == second[0] and r.label == second[1]]
    assert clipped and clipped[0][0] + clipped[0][2] == 128
    assert "boxes outside their image (not scored): 1 of" in (tmp_path / "eval" / "results.md").read_text()


def test_evaluate_cli_rejects_bad_model_weights_and_outputs_before_work(capsys, phantom_set: Path,
                                                                       random_checkpoint: Path, tmp_path: Path):
    from conftest import run_xcam

    (tmp_path / "afile").write_text("")
    base = ["evaluate", "--imgpath", str(phantom_set / "images"), "--bbox-csv", str(phantom_set / "BBox_List_2017.csv"),
            "--models", f"mobilenetv3:{random_checkpoint},densenet121", "--random-weights", "--bootstrap", "0"]
    code, _, err = run_xcam(base + ["--model-weights", "1,-1", "--output", str(tmp_path / "eval")], capsys)
    assert code == 2 and err.strip() == "error: --model-weights '1,-1': weights must be non-negative with a positive sum"
    code, _, err = run_xcam(base + ["--output", str(tmp_path / "afile" / "eval")], capsys)
    assert code == 2 and err.strip() == (f"error: --output {tmp_path / 'afile' / 'eval'}: cannot create it, "
                                         f"{tmp_path / 'afile'} is a file")
    assert not (tmp_path / "eval").exists()
