"""DICOM: reading as torchxrayvision does (modality LUT, VOI, MONOCHROME1, multi-frame) and DICOM out
(SEG, SR, CAM overlays) read back equal to what the chain computed; dciodvfy when installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from xcam.chain.engine import build_chain
from xcam.chain.models import LoadOptions
from xcam.chain.outputs import finding_names, finding_prefix, write_result
from xcam.chain.settings import ClassChoice, resolve_settings
from xcam.core.config import XcamConfig
from xcam.core.errors import ImageLoadError
from xcam.core.imageio import DicomReadOptions, load_image, modality_range, set_dicom_options
from xcam.core.manager import get_plugin_manager
from xcam.core.preprocess import preprocess, xrv_scale
from xcam.interop.codes import FINDING_CODES, PRIVATE_SCHEME, PROBABILITY, finding_code
from xcam.interop.dicom import DicomOutputError, weights_digests, write_dicom

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

SHARED_DICOMS = ["1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm", "Fake_MONOHR1.dcm"]
WIDTH, HEIGHT = 320, 256  # non-square, small


# -- a DICOM made here, so the tests always run ---------------------------------------------------
def make_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int = 12,
               slope: float | None = 2.0, intercept: float | None = -1024.0, window: tuple[float, float] | None = None,
               drop: tuple[str, ...] = ()) -> Path:
    """A DX-like image with patient/study attributes; ``pixels`` ``uint16`` ``[rows, cols]`` or
    ``[frames, rows, cols]``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "Doe^Jane", "XCAM-0001", "F", "19700101"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PatientAge = "55"  # invalid for AS (should be 055Y): xcam must not copy it into what it writes
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240102", "101500", "ACC1", "S1"
    ds.ReferringPhysicianName, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "", "DX", 1, 1
    ds.ConversionType, ds.PatientOrientation = "WSD", ["P", "F"]
    ds.set_pixel_data(pixels.astype(np.uint16), photometric, bits)
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for keyword in drop:
        delattr(ds, keyword)
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_like(width: int = WIDTH, height: int = HEIGHT, bits: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    top = 2**bits - 1
    img = 0.5 + 0.25 * np.sin(xx / 23.0) * np.cos(yy / 31.0) + rng.normal(0, 0.03, (height, width))
    img[60:120, 200:280] += 0.3  # a bright "lesion"
    return np.clip(img * top, 0, top).astype(np.uint16)


@pytest.fixture(autouse=True)
def default_dicom_reading():
    """``--dicom-voi`` sets a process-wide default: every test starts and ends with xcam's default."""
    set_dicom_options(DicomReadOptions())
    yield
    set_dicom_options(DicomReadOptions())


@pytest.fixture
def dicom_file(tmp_path) -> Path:
    return make_dicom(tmp_path / "generated.dcm", chest_like())


# -- reading ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHARED_DICOMS)
def test_reading_equals_torchxrayvision(shared_data, name):
    """xcam's model input equals ``xrv.utils.read_xray_dcm``'s at full resolution; at 224 px it
    equals xrv's ``XRayResizer(engine="cv2")`` and differs from the default skimage resizer by the
    measured amount (docs/dicom.md)."""
    xrv = pytest.importorskip("torchxrayvision")
    path = shared_data / "xrv-samples" / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xrv warns about converting MONOCHROME1
        reference = xrv.utils.read_xray_dcm(str(path))
    image = load_image(path)
    assert np.abs(xrv_scale(image.pixels) - reference).max() < 1e-3  # was 5.07 mean, 8.03 max (min-max stretch)
    x, _ = preprocess(image, 224)
    cv2_resized = xrv.datasets.XRayResizer(224, engine="cv2")(reference[None])[0]
    assert np.abs(x[0] - cv2_resized).max() < 1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skimage_resized = xrv.datasets.XRayResizer(224)(reference[None])[0]
    difference = float(np.abs(x[0] - skimage_resized).mean())
    assert 2.0 < difference < 3.5, difference  # measured 3.31: area averaging vs anti-aliased bilinear


def test_modality_lut_window_and_monochrome1(tmp_path):
    stored = chest_like()
    mono2 = make_dicom(tmp_path / "m2.dcm", stored, window=(3000.0, 2000.0))
    mono1 = make_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    ds = pydicom.dcmread(mono2)
    assert modality_range(ds) == (-1024.0, 4095 * 2.0 - 1024.0)
    expected = (stored * 2.0 - 1024.0 + 1024.0) / (4095 * 2.0)  # modality LUT, then its full output range
    image = load_image(mono2)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.bit_depth == 12
    np.testing.assert_allclose(load_image(mono1).pixels, 1.0 - expected, atol=1e-6)

    # VOI: the file's window (auto), a window of our own, and pydicom's own windowing as the reference
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(stored, ds)
    auto = load_image(mono2, DicomReadOptions.parse("auto")).pixels
    lo, hi = modality_range(ds)
    np.testing.assert_allclose(auto, (apply_voi_lut(values, ds, prefer_lut=False) - lo) / (hi - lo), atol=1e-6)
    assert auto.min() == 0.0 and auto.max() == 1.0 and not np.allclose(auto, expected)
    own = load_image(mono2, DicomReadOptions.parse("3000,2000")).pixels
    np.testing.assert_allclose(own, auto, atol=1e-6)
    narrow = load_image(mono2, DicomReadOptions.parse("3000,200")).pixels
    assert (narrow == 0).mean() > (auto == 0).mean()
    # no window in the file: auto is the default reading
    np.testing.assert_allclose(load_image(mono1, DicomReadOptions.parse("auto")).pixels, 1.0 - expected, atol=1e-6)
    for bad in ["12", "a,b", "10,0"]:
        with pytest.raises(ValueError):
            DicomReadOptions.parse(bad)


def test_multiframe_reads_only_the_first_frame(tmp_path, monkeypatch):
    import pydicom.pixels

    frames = np.stack([chest_like(seed=i) for i in range(3)])
    frames[1:] = 4095 - frames[1:]
    path = make_dicom(tmp_path / "multi.dcm", frames, slope=None)
    calls: list[object] = []
    original = pydicom.pixels.pixel_array

    def spy(src, **kwargs):
        calls.append(kwargs.get("index"))
        return original(src, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    image = load_image(path)
    assert calls == [0]  # one frame decoded, by index
    np.testing.assert_allclose(image.pixels, frames[0] / 4095.0, atol=1e-6)
    assert (image.width, image.height) == (WIDTH, HEIGHT)


def test_unsupported_and_broken_dicom_is_one_line(tmp_path):
    path = make_dicom(tmp_path / "palette.dcm", chest_like(bits=8), bits=8, slope=None)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(path)
    with pytest.raises(ImageLoadError, match="unsupported DICOM Photometric Interpretation PALETTE COLOR") as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# -- writing ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager(XcamConfig(), entrypoints=False)


@pytest.fixture(scope="module")
def chain(pm):
    """mobilenetv3 (random weights written under the real file name, so its sha256 is known),
    Grad-CAM on its target layer, the two most probable classes explained."""
    import os

    from xcam.core.weights import WeightsStore
    from xcam.testing import write_random_weights

    folder = Path(os.environ["XRV_CACHE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    write_random_weights(pm.classifier("mobilenetv3"), folder)
    return build_chain(pm, "mobilenetv3", resolve_settings(pm, "fast"), ClassChoice(top_k=2, threshold=0.0),
                       load=LoadOptions(), store=WeightsStore.from_env(str(folder)), keep_images=True)


def read_back(paths: list[Path]) -> tuple:
    by_kind = {p.name.rsplit("_", 1)[1].split(".")[0]: p for p in paths}
    seg = hd.seg.segread(by_kind["SEG"])
    sr = hd.sr.srread(by_kind["SR"])
    overlays = [pydicom.dcmread(p) for p in paths if "_CAM" in p.name]
    return seg, sr, overlays


def check_equal(result, paths: list[Path], source_path: Path, output: Path | None = None) -> None:
    """The SEG, SR and overlays in ``paths`` say exactly what ``result`` holds."""
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    seg, sr, overlays = read_back(paths)
    findings = [f for _, f in result.findings]
    grid = result.grid
    # the references and the copied patient/study attributes; new series and instances
    for ds in [seg, sr, *overlays]:
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.PatientName == source.PatientName and ds.get("AccessionNumber") == source.get("AccessionNumber")
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
        assert "PatientAge" not in ds or len(str(ds.PatientAge)) == 4  # an invalid age is not copied
    assert len({seg.SeriesInstanceUID, sr.SeriesInstanceUID, overlays[0].SeriesInstanceUID}) == 3
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID

    # SEG: one segment per finding, coded, the mask in the source's pixel grid (= the _P3 image)
    localized = [f for f in findings if f.mask.any()]
    assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == len(localized) == len(findings)
    masks = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)[0]
    assert masks.shape == (source.Rows, source.Columns, len(localized))
    for i, (finding, segment) in enumerate(zip(localized, seg.SegmentSequence)):
        code = finding_code(finding.pathology)
        prop = segment.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator) == (code.value, code.scheme)
        assert finding.pathology in segment.SegmentLabel
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert "cam_method=gradcam" in algorithm.AlgorithmParameters
        assert "weights_sha256=" in algorithm.AlgorithmParameters
        expected = grid.to_original(finding.mask)
        assert expected.shape == (source.Rows, source.Columns)
        np.testing.assert_array_equal(masks[:, :, i].astype(bool), expected)
        if output is not None:
            from xcam.core.render import read_png

            p3 = read_png(output / result.stem / finding_names(finding_prefix("mobilenetv3", finding.pathology))["P3"])
            np.testing.assert_array_equal(masks[:, :, i].astype(bool), p3 > 0)

    # SR: per finding its code, probability, box polyline on the source image, CAM method, algorithm
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == sum(len(f.boxes) for f in findings)
    for finding, group in zip([f for f in findings for _ in f.boxes], groups):
        code = finding_code(finding.pathology)
        assert (group.finding_type.value, group.finding_type.scheme_designator) == (code.value, code.scheme)
        (probability,) = group.get_measurements(name=PROBABILITY.concept())
        assert probability.value == pytest.approx(finding.probability, abs=1e-9)
        box = finding.box
        corners = [[box.x, box.y], [box.x + box.width, box.y], [box.x + box.width, box.y + box.height],
                   [box.x, box.y + box.height], [box.x, box.y]]
        region = group.roi
        assert region.graphic_type.value == "POLYLINE"
        np.testing.assert_allclose(region.value, corners, rtol=0, atol=1e-3)  # SCOORD values are float32
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        items = group[0].ContentSequence
        texts = {i.TextValue for i in items if i.ValueType == "TEXT"}
        assert {"xcam mobilenetv3", "cam_method=gradcam", "weights=mobilenetv3-nih"} <= texts
        (method,) = [i.ConceptCodeSequence[0] for i in items
                     if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Method"]
        assert (method.CodeValue, method.CodingSchemeDesignator) == ("130403", "DCM")  # gradient-weighted CAM
    # overlays: one RGB secondary capture per finding in the source's grid
    assert len(overlays) == len(findings)
    assert all(o.Rows == source.Rows and o.Columns == source.Columns and o.SamplesPerPixel == 3 for o in overlays)


def run_dciodvfy(paths: list[Path]) -> None:
    tool = shutil.which("dciodvfy")
    if tool is None:
        return
    for path in paths:
        proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_seg_sr_of_a_generated_dicom_read_back_equal(tmp_path, chain, dicom_file):
    result = chain.analyze(dicom_file)
    assert result.ok and len(result.results[0].findings) == 2
    write_result(result, tmp_path / "out", settings=chain.settings.as_dict())
    paths = write_dicom(result, tmp_path / "dicom", digests=weights_digests(chain.models))
    assert [p.name for p in paths] == ["generated_SEG.dcm", "generated_SR.dcm", "generated_CAM1.dcm",
                                       "generated_CAM2.dcm"]
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == sorted(p.name for p in paths)  # no temp left
    check_equal(result, paths, dicom_file, tmp_path / "out")
    sha = weights_digests(chain.models)["mobilenetv3"]
    assert len(sha) == 64
    seg = pydicom.dcmread(paths[0])
    assert f"weights_sha256={sha}" in seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0] \
        .AlgorithmParameters
    run_dciodvfy(paths)


@pytest.mark.parametrize("name", SHARED_DICOMS)
def test_seg_sr_of_the_shared_dicoms(tmp_path, chain, shared_data, name):
    """MONOCHROME2 and MONOCHROME1 (JPEG-compressed CR, 1024²; its Patient's Age '62' is invalid)."""
    source = shared_data / "xrv-samples" / name
    result = chain.analyze(source)
    paths = write_dicom(result, tmp_path, digests=weights_digests(chain.models))
    check_equal(result, paths, source)
    run_dciodvfy(paths)


def test_consolidated_findings_get_their_own_segment(tmp_path, pm, dicom_file):
    chain = build_chain(pm, "mobilenetv3,mobilenetv3:mobilenetv3-nih", resolve_settings(pm, "fast"),
                        ClassChoice(targets=("Mass",)), load=LoadOptions(random_init=True))
    result = chain.analyze(dicom_file)
    assert len(result.consolidated) == 1
    paths = write_dicom(result, tmp_path, overlays=False)
    seg = pydicom.dcmread(paths[0])
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels[-1] == "Mass (consolidated)" and len(labels) == 3
    params = seg.SegmentSequence[-1].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert "ensembler=mean" in params and "models=" in params


def test_multiframe_source_gets_output_for_its_first_frame(tmp_path, chain):
    frames = np.stack([chest_like(seed=i) for i in range(3)])
    source = make_dicom(tmp_path / "multi.dcm", frames, slope=None)
    result = chain.analyze(source)
    paths = write_dicom(result, tmp_path / "dicom", overlays=False)
    seg = pydicom.dcmread(paths[0])
    findings = [f for _, f in result.findings]
    assert int(seg.NumberOfFrames) == len(findings)  # only frame 1's masks, empty frames omitted
    stored = seg.pixel_array.reshape(len(findings), HEIGHT, WIDTH).astype(bool)
    for finding, mask in zip(findings, stored):
        np.testing.assert_array_equal(mask, result.grid.to_original(finding.mask))
    run_dciodvfy(paths)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_errors_it_is_given(tmp_path, dicom_file):
    """The validator check above can fail: dciodvfy reports an error for a broken object."""
    ds = pydicom.dcmread(dicom_file)
    del ds.SOPClassUID
    ds.Rows = 0
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    with pytest.raises(AssertionError):
        run_dciodvfy([bad])


def test_non_dicom_and_incomplete_dicom_get_one_line_and_nothing_written(tmp_path, chain, dicom_file):
    import cv2

    png = tmp_path / "plain.png"
    cv2.imwrite(str(png), (chest_like() // 16).astype(np.uint8))
    out = tmp_path / "dicom"
    with pytest.raises(DicomOutputError, match=r"plain\.png: not a DICOM file") as info:
        write_dicom(chain.analyze(png), out)
    assert "\n" not in str(info.value) and not out.exists()

    incomplete = make_dicom(tmp_path / "nostudy.dcm", chest_like(), drop=("StudyInstanceUID",))
    with pytest.raises(DicomOutputError, match=r"nostudy\.dcm: DICOM file lacks StudyInstanceUID"):
        write_dicom(chain.analyze(incomplete), out)
    assert not out.exists()


def test_a_failing_write_leaves_nothing(tmp_path, chain, dicom_file, monkeypatch):
    result = chain.analyze(dicom_file)
    original = pydicom.Dataset.save_as
    calls = []

    def fail_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", fail_second)
    out = tmp_path / "dicom"
    with pytest.raises(DicomOutputError, match=r"generated\.dcm: cannot write DICOM output \(.*No space left"):
        write_dicom(result, out)
    assert list(out.iterdir()) == []


def test_codes_table():
    """Every DICOM-table code is in DICOM's own tables (pydicom's copy); private codes fit SH."""
    from pydicom.sr._concepts_dict import concepts

    from xcam.core.labels import NIH_LABELS, label_key
    from xcam.plugins.classifiers.xrv_catalog import XRV_LABELS

    known = {(scheme, code) for scheme, table in concepts.items() for entry in table.values() for code in entry}
    for label in [*NIH_LABELS, *XRV_LABELS]:  # the 14 NIH and 18 torchxrayvision labels all have a code
        assert finding_code(label) is FINDING_CODES[label_key(label)]
    for code in FINDING_CODES.values():
        assert len(code.value) <= 16
        if code.source == "DICOM PS3.16":
            assert (code.scheme, code.value) in known, code
    assert finding_code("Infiltrate") == finding_code("Infiltration")
    other = finding_code("Some New Finding")
    assert other.scheme == PRIVATE_SCHEME and other.value == finding_code("some_new_finding").value
    assert len(other.value) <= 16 and other.value != finding_code("Another Finding").value


# -- commands --------------------------------------------------------------------------------------
def test_cli_cam_and_analyze_write_dicom(tmp_path, xcam_cli, pm, dicom_file):
    import cv2

    out, dicom = tmp_path / "out", tmp_path / "dicom"
    code, stdout, err = xcam_cli("cam", "--input", str(dicom_file), "--model", "mobilenetv3", "--random-weights",
                                 "--profile", "fast", "--output-dir", str(out), "--dicom-out", str(dicom), pm=pm)
    assert code == 0, err
    assert "DICOM files (generated_SEG.dcm, generated_SR.dcm" in stdout
    assert (dicom / "generated_SR.dcm").is_file()

    png = tmp_path / "plain.png"
    cv2.imwrite(str(png), (chest_like() // 16).astype(np.uint8))
    code, _, err = xcam_cli("cam", "--input", str(png), "--model", "mobilenetv3", "--random-weights",
                            "--output-dir", str(tmp_path / "out2"), "--dicom-out", str(tmp_path / "d2"), pm=pm)
    assert code != 0 and err.strip().count("\n") == 0 and "plain.png: not a DICOM file" in err
    assert not (tmp_path / "out2").exists() and not (tmp_path / "d2").exists()  # failed before anything was written

    code, _, err = xcam_cli("cam", "--input", str(dicom_file), "--dicom-voi", "wide", "--random-weights", pm=pm)
    assert code != 0 and "--dicom-voi 'wide': expected none, auto or CENTER,WIDTH" in err

    # a folder: the PNG is one failure line, the DICOM gets its files, the job goes on
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy(png, folder / "a_plain.png")
    shutil.copy(dicom_file, folder / "b_generated.dcm")
    code, stdout, err = xcam_cli("analyze", "--input", str(folder), "--models", "mobilenetv3", "--random-weights",
                                 "--profile", "fast", "--top-k", "1", "--threshold", "0", "--no-render",
                                 "--output-dir", str(tmp_path / "out3"), "--dicom-out", str(tmp_path / "d3"),
                                 "--dicom-voi", "auto", "--quiet", pm=pm)
    assert code == 1
    assert [line for line in err.splitlines() if "a_plain.png" in line] == \
        [f"error: {folder / 'a_plain.png'}: not a DICOM file; DICOM output (--dicom-out) needs a DICOM input"]
    assert sorted(p.name for p in (tmp_path / "d3").iterdir()) == [
        "b_generated_CAM1.dcm", "b_generated_SEG.dcm", "b_generated_SR.dcm"]
    summary = json.loads((tmp_path / "out3" / "analyze_summary.json").read_text())
    assert [i["status"] for i in summary["images"]] == ["error", "ok"]


# -- --dicom-voi on classify, score (threads, worker processes, Ray) and evaluate ----------------------
WINDOW = (3000.0, 2000.0)  # modality units: the middle of chest_like's -1024…7166 range, stretched


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A small mobilenetv3 checkpoint (64 px, random weights) whose output depends on its input: its
    batch-norm statistics are measured on random inputs (freshly initialised, every image gives the
    same probabilities, so no reading difference could show)."""
    import torch

    from xcam.nets.mobilenet import MobileNetV3

    torch.manual_seed(0)
    model = MobileNetV3(arch="mobilenet_v3_small", input_size=64, cam_layer="net.features.8")
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, 64, 64) * 400)
    path = tmp_path_factory.mktemp("voi") / "live.pt"
    torch.save(model.eval().checkpoint_object(), path)
    return str(path)


@pytest.fixture
def windowed_folder(tmp_path) -> Path:
    """Three small DICOMs that carry a window of their own (``WINDOW``)."""
    folder = tmp_path / "windowed"
    folder.mkdir()
    for seed in range(3):
        make_dicom(folder / f"w{seed}.dcm", chest_like(seed=seed), window=WINDOW)
    return folder


def classify_json(xcam_cli, pm, checkpoint: str, path: Path, voi: str) -> dict[str, float]:
    code, out, err = xcam_cli("classify", "--input", str(path), "--model", "mobilenetv3", "--weights", checkpoint,
                              "--dicom-voi", voi, "--json", pm=pm)
    assert code == 0, err
    return json.loads(out)["predictions"]


def score_rows(xcam_cli, pm, checkpoint: str, folder: Path, output: Path, voi: str, *more: str) -> dict[str, dict]:
    from xcam.score.writers import read_rows

    code, out, err = xcam_cli("score", "--input", str(folder), "--output", str(output), "--models",
                              f"mobilenetv3:{checkpoint}", "--backend", "torch", "--batch-size", "2",
                              "--no-progress", "--dicom-voi", voi, *more, pm=pm)
    assert code == 0, out + err
    rows = {Path(r["path"]).name: r for r in read_rows(output)}
    assert sorted(rows) == ["w0.dcm", "w1.dcm", "w2.dcm"] and {r["status"] for r in rows.values()} == {"ok"}
    return {name: {k.rsplit(":", 1)[1]: v for k, v in r.items() if k.startswith("mobilenetv3") and v is not None}
            for name, r in rows.items()}


def max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    assert sorted(a) == sorted(b) and a
    return max(abs(a[k] - b[k]) for k in a)


def test_classify_reads_dicom_with_dicom_voi(xcam_cli, pm, checkpoint, windowed_folder):
    from xcam.export.backends import load_classifier

    path = windowed_folder / "w0.dcm"
    plain = classify_json(xcam_cli, pm, checkpoint, path, "none")
    window = classify_json(xcam_cli, pm, checkpoint, path, f"{WINDOW[0]:g},{WINDOW[1]:g}")
    auto = classify_json(xcam_cli, pm, checkpoint, path, "auto")  # the file's own window: the same numbers
    assert max_difference(plain, window) > 1e-3  # the window changes what the model sees
    assert max_difference(auto, window) < 1e-6

    # what classify printed is the classifier on the image read with that window, not by default
    clf = load_classifier(pm, "mobilenetv3", checkpoint, backend="torch", device="cpu")
    for options, got in ((DicomReadOptions(voi="window", window=WINDOW), window), (DicomReadOptions(), plain)):
        batch, _ = preprocess(load_image(path, options), clf.input_size, clf.preprocessing)
        probs = clf.predict(batch[None])[0]
        want = {clf.labels[i]: float(probs[i]) for i in clf.valid_indices}
        assert max_difference(got, want) < 1e-5


def test_score_worker_processes_read_dicom_as_the_parent(tmp_path, xcam_cli, pm, checkpoint, windowed_folder):
    """A process-wide ``--dicom-voi`` does not reach worker processes: they get the options explicitly."""
    voi = f"{WINDOW[0]:g},{WINDOW[1]:g}"
    threads = score_rows(xcam_cli, pm, checkpoint, windowed_folder, tmp_path / "threads.csv", voi)
    processes = score_rows(xcam_cli, pm, checkpoint, windowed_folder, tmp_path / "processes.csv", voi,
                           "--pool", "process", "--workers", "2")
    plain = score_rows(xcam_cli, pm, checkpoint, windowed_folder, tmp_path / "plain.csv", "none",
                       "--pool", "process", "--workers", "2")
    for name in threads:
        assert max_difference(threads[name], processes[name]) < 1e-6, name
        assert max_difference(threads[name], plain[name]) > 1e-3, name
    # the same file and option give the same probabilities in classify and score
    assert max_difference(classify_json(xcam_cli, pm, checkpoint, windowed_folder / "w1.dcm", voi),
                          threads["w1.dcm"]) < 1e-5
    assert max_difference(classify_json(xcam_cli, pm, checkpoint, windowed_folder / "w1.dcm", "none"),
                          plain["w1.dcm"]) < 1e-5


def test_evaluate_reads_dicom_with_dicom_voi(tmp_path, xcam_cli, pm, checkpoint, windowed_folder):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                     "w0.dcm,Cardiomegaly,100,60,120,120\nw1.dcm,Mass,200,60,80,60\n")

    def records(voi: str) -> list[dict]:
        out = tmp_path / f"eval-{voi.replace(',', '_')}"
        code, stdout, err = xcam_cli("evaluate", "--imgpath", str(windowed_folder), "--bbox-csv", str(boxes),
                                     "--models", f"mobilenetv3:{checkpoint}", "--profile", "fast",
                                     "--output", str(out), "--bootstrap", "0", "--montage", "1", "--quiet",
                                     "--dicom-voi", voi, pm=pm)
        assert code == 0, stdout + err
        found = json.loads((out / "results.json").read_text())["records"]
        assert [(r["image"], r["evaluated"]) for r in found] == [("w0.dcm", True), ("w1.dcm", True)]
        return found

    window, auto, plain = records(f"{WINDOW[0]:g},{WINDOW[1]:g}"), records("auto"), records("none")
    assert window == auto  # the file's own window, read through either spelling
    scores = lambda rs: [(r["point"], [p[4] for p in r["preds"]]) for r in rs]  # noqa: E731
    assert scores(window) != scores(plain)


@pytest.mark.parametrize("command", ["classify", "score", "evaluate"])
@pytest.mark.parametrize("value, problem", [("wide", "expected none, auto or CENTER,WIDTH (e.g. 2048,4096)"),
                                            ("40,0", "the window width must be > 0")])
def test_bad_dicom_voi_is_one_line(tmp_path, xcam_cli, pm, dicom_file, command, value, problem):
    args = {"classify": ["--input", str(dicom_file)],
            "score": ["--input", str(dicom_file.parent), "--output", str(tmp_path / "r.csv")],
            "evaluate": ["--imgpath", str(dicom_file.parent), "--bbox-csv", str(tmp_path / "boxes.csv")]}[command]
    code, out, err = xcam_cli(command, *args, "--dicom-voi", value, pm=pm)
    assert code == 2 and err == f"error: --dicom-voi {value!r}: {problem}\n"
    assert not (tmp_path / "r.csv").exists()


def test_score_on_ray_reads_dicom_as_the_driver(tmp_path, xcam_cli, pm, checkpoint, windowed_folder):
    """Ray tasks decode in worker processes that never saw ``--dicom-voi``: the task gets the options."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    voi = f"{WINDOW[0]:g},{WINDOW[1]:g}"
    local = score_rows(xcam_cli, pm, checkpoint, windowed_folder, tmp_path / "local.csv", voi)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = score_rows(xcam_cli, pm, checkpoint, windowed_folder, tmp_path / "ray.csv", voi, "--engine", "ray")
    finally:
        if started:
            ray.shutdown()
    for name in local:
        assert max_difference(local[name], remote[name]) < 1e-6, name
