"""Bootstrap intervals of ``xcam evaluate`` and the paired ``--compare``: known cases, the
resampling unit, determinism, agreement with the point estimates and with scipy, and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from xcam.evaluation.bootstrap import add_intervals, clusters, interval, record_table
from xcam.evaluation.protocol import BoxRecord, summarize

GT = (100.0, 100.0, 100.0, 50.0)
MISS = (300.0, 300.0, 50.0, 50.0)


def _record(image: str, label: str = "Mass", good: bool = True, gt=GT) -> BoxRecord:
    """A box localized perfectly (``good``: box = truth, CAM peak inside) or missed entirely."""
    r = BoxRecord(image, label, gt, 512, 512, preds=[(*(gt if good else MISS), 1.0)], hit=good)
    r.baselines = {"lung_field": (90.0, 90.0, 150.0, 80.0), "centre": (206.0, 231.0, 100.0, 50.0)}
    return r


def _hits(n: int, k: int, name="img{}.png", label: str = "Mass") -> list[BoxRecord]:
    return [_record(name.format(i), label, good=i < k) for i in range(n)]


def _summary(records, resamples=1000, seed=0):
    s = summarize(records)
    return add_intervals(s, record_table(records), resamples, seed)


def test_known_proportion_matches_the_normal_approximation_and_scipy():
    from scipy.stats import bootstrap

    s = _summary(_hits(100, 30), resamples=2000)
    row = s["classes"]["Mass"]
    assert row["pointing"] == pytest.approx(0.3)
    lo, hi = interval(row, ("pointing",))
    half = 1.96 * math.sqrt(0.3 * 0.7 / 100)  # 0.0898
    assert lo == pytest.approx(0.3 - half, abs=0.02) and hi == pytest.approx(0.3 + half, abs=0.02)
    ref = bootstrap((np.r_[np.ones(30), np.zeros(70)],), np.mean, n_resamples=2000, method="percentile",
                    random_state=1).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.02) and hi == pytest.approx(ref.high, abs=0.02)
    # every metric of the row has an interval around its value, the class mean too (one class: the same)
    assert interval(row, ("iobb", "0.25")) == (lo, hi) and interval(row, ("iou", "0.7")) == (lo, hi)
    assert interval(s["mean"], ("pointing",)) == (lo, hi)
    assert s["bootstrap"] == {"resamples": 2000, "seed": 0, "confidence": 0.95, "method": "percentile",
                              "unit": "image", "units": 100, "complete": 2000}


def test_all_hits_give_one_to_one_and_the_baselines_get_intervals():
    s = _summary(_hits(40, 40))
    row = s["classes"]["Mass"]
    assert interval(row, ("pointing",)) == (1.0, 1.0) and interval(row, ("iobb", "0.9")) == (1.0, 1.0)
    assert interval(row, ("afp", "0.25")) == (0.0, 0.0) and interval(row, ("miou",)) == (1.0, 1.0)
    lung = s["baselines"]["lung_field"]["classes"]["Mass"]  # IoBB 5000/12000 on every box
    assert interval(lung, ("iobb", "0.25")) == (1.0, 1.0) and interval(lung, ("iobb", "0.5")) == (0.0, 0.0)


def test_intervals_are_deterministic_with_the_seed():
    records = _hits(60, 25) + _hits(30, 10, "b{}.png", "Nodule")
    a, b, c = (_summary(records, 300, seed) for seed in (7, 7, 8))
    assert a["classes"] == b["classes"] and a["mean"] == b["mean"]
    assert a["classes"]["Mass"]["ci"] != c["classes"]["Mass"]["ci"]


def test_point_estimates_of_the_table_equal_the_summary_and_lie_in_their_intervals():
    rng = np.random.default_rng(3)
    records = []
    for i in range(80):
        label = ("Mass", "Nodule", "Effusion")[i % 3]
        gt = tuple(float(v) for v in rng.uniform(50, 300, 4))
        preds = [(*(float(v) for v in rng.uniform(0, 350, 4)), 1.0) for _ in range(int(rng.integers(0, 3)))]
        r = BoxRecord(f"im{i // 2}.png", label, gt, 512, 512, preds=preds, hit=bool(rng.random() < 0.5))
        r.baselines = {"lung_field": (40.0, 40.0, 400.0, 380.0), "centre": (200.0, 200.0, 110.0, 90.0)}
        records.append(r)
    from xcam.evaluation.bootstrap import cell_paths, cells, get_path

    table = record_table(records)
    s = _summary(records, 500)
    for source, rows in (("cam", s["classes"]), ("centre", s["baselines"]["centre"]["classes"])):
        num, den = cells(table, source)
        for label, row in rows.items():
            mine = np.asarray(table.labels) == label
            for k, path in enumerate(cell_paths(source)):
                value = get_path(row, path)
                assert num[mine, k].sum() / den[mine, k].sum() == pytest.approx(value)
                lo, hi = interval(row, path)
                assert lo - 1e-9 <= value <= hi + 1e-9
    lo, hi = interval(s["mean"], ("afp", "0.25"))
    assert lo <= s["mean"]["afp"]["0.25"] <= hi and hi > lo


def test_patients_are_resampled_when_images_have_nih_names():
    # 50 patients, two follow-ups each with the same outcome: the pairs are not independent
    nih = [_record(f"{p:08d}_{f:03d}.png", good=p < 15) for p in range(50) for f in range(2)]
    plain = [_record(f"p{p}_{f}.png", good=p < 15) for p in range(50) for f in range(2)]
    index, unit = clusters([r.image for r in nih])
    assert unit == "patient" and index.max() == 49 and index[0] == index[1] != index[2]
    assert clusters([r.image for r in plain])[1] == "image"
    s_nih, s_plain = _summary(nih), _summary(plain)
    assert s_nih["bootstrap"]["unit"] == "patient" and s_nih["bootstrap"]["units"] == 50
    width = lambda s: np.subtract(*interval(s["classes"]["Mass"], ("pointing",))[::-1])  # noqa: E731
    assert width(s_nih) / width(s_plain) == pytest.approx(math.sqrt(2), rel=0.2)  # half the independent units


def test_class_mean_interval_comes_from_resampled_class_means():
    # two classes on disjoint images: a resample can miss the small one; those do not count for the mean
    records = _hits(100, 50) + _hits(2, 1, "n{}.png", "Nodule")
    s = _summary(records, 1000)
    assert 800 < s["bootstrap"]["complete"] < 920  # P(a resample holds a nodule image) ≈ 1 − e⁻² = 0.86
    lo, hi = interval(s["mean"], ("pointing",))
    assert s["mean"]["pointing"] == pytest.approx(0.5) and lo <= 0.5 <= hi
    mass_lo, mass_hi = interval(s["classes"]["Mass"], ("pointing",))
    assert hi - lo > 2 * (mass_hi - mass_lo)  # the 2-box class's spread dominates the mean of two classes
    assert interval(s["classes"]["Nodule"], ("pointing",)) == (0.0, 1.0)


def test_no_resamples_no_intervals():
    s = _summary(_hits(10, 3), resamples=0)
    assert "ci" not in s["classes"]["Mass"] and "bootstrap" not in s
    one_image = [_record("a.png"), _record("a.png", "Nodule", good=False)]
    s = _summary(one_image)
    assert "ci" not in s["mean"] and "bootstrap" not in s


def test_bootstrap_of_1000_records_is_vectorized():
    import time

    records = [_record(f"{i // 3:08d}_{i % 3:03d}.png", ("Mass", "Nodule", "Effusion", "Atelectasis")[i % 4],
                       good=i % 5 < 2) for i in range(1000)]
    table = record_table(records)
    s = summarize(records)
    start = time.perf_counter()
    add_intervals(s, table, 1000, 0)
    assert time.perf_counter() - start < 10  # ≈ 0.1 s measured; a loop over resamples in Python takes minutes


# -- paired comparison ----------------------------------------------------------------------------------
def _results(path: Path, records) -> Path:
    from xcam.core.jsonio import write_json

    s = _summary(records, 200)
    write_json(path, {"summary": s, "per_record": record_table(records).to_json()})
    return path


def _pair(tmp_path: Path, hits_a: int, hits_b: int, n: int = 120):
    a = _hits(n, hits_a) + _hits(n // 2, n // 4, "n{}.png", "Nodule")
    b = [_record(r.image, r.label, good=i < hits_b if r.label == "Mass" else r.hit) for i, r in enumerate(a)]
    return _results(tmp_path / "a.json", a), _results(tmp_path / "b.json", b)


def test_compare_of_identical_results_is_zero(tmp_path: Path):
    from xcam.evaluation.compare import compare_files

    a, b = _pair(tmp_path, 40, 40)
    out = compare_files(a, b, resamples=500)
    cell = out["mean"]["pointing"]
    assert cell["diff"] == 0 and cell["lower"] <= 0 <= cell["upper"]
    assert set(out["verdicts"].values()) == {"no difference detectable"}
    assert out["bootstrap"]["unit"] == "image" and out["boxes"] == 180


def test_compare_flags_the_clearly_better_result(tmp_path: Path):
    from xcam.evaluation.compare import compare_files, markdown

    a, b = _pair(tmp_path, 30, 90)  # Mass pointing 0.25 → 0.75 on the same 120 boxes
    out = compare_files(a, b, resamples=500)
    mass = out["classes"]["Mass"]["pointing"]
    assert mass["diff"] == pytest.approx(0.5) and 0.35 < mass["lower"] < mass["upper"] < 0.65
    assert out["mean"]["pointing"]["diff"] == pytest.approx(0.25)  # two classes, Nodule unchanged
    assert out["classes"]["Nodule"]["pointing"] == {"diff": 0.0, "lower": 0.0, "upper": 0.0}
    assert out["verdicts"]["pointing"] == out["verdicts"]["T(IoBB>0.25)"] == "B better"
    assert out["verdicts"]["AFP@IoBB0.25"] == "B better"  # fewer false boxes: the difference is negative
    assert out["mean"]["AFP@IoBB0.25"]["upper"] < 0
    reverse = compare_files(b, a, resamples=500)
    assert reverse["verdicts"]["pointing"] == reverse["verdicts"]["AFP@IoBB0.25"] == "A better"
    assert "pointing: B − A = +0.250 [" in markdown(out) and "→ B better" in markdown(out)


def test_compare_on_the_command_line(tmp_path: Path, capsys):
    from xcam.cli import main

    a, b = _pair(tmp_path, 30, 90)
    try:
        main(["evaluate", "--compare", str(a), str(b), "--output", str(tmp_path / "cmp"), "--bootstrap", "300"])
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    text = capsys.readouterr().out
    assert "pointing: B − A = +0.250" in text and "B better" in text
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["bootstrap"]["resamples"] == 300 and saved["verdicts"]["pointing"] == "B better"
    assert "| **mean** |" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.parametrize("change, message", [
    ("image", "different images: 1 image(s) only in A (img5.png); 1 image(s) only in B (other.png)"),
    ("box", "different ground truth on 1 image(s) (img5.png): img5.png has [Mass [100.0, 100.0, 100.0, 50.0]] "
            "in A and [Mass [100.0, 100.0, 100.0, 60.0]] in B"),
])
def test_compare_of_different_boxes_is_a_one_line_error(tmp_path: Path, capsys, change: str, message: str):
    from xcam.cli import main

    records = _hits(20, 10)
    a = _results(tmp_path / "a.json", records)
    if change == "image":
        records[5] = _record("other.png")
    else:
        records[5] = _record("img5.png", gt=(100.0, 100.0, 100.0, 60.0))
    b = _results(tmp_path / "b.json", records)
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--compare", str(a), str(b), "--output", str(tmp_path / "cmp")])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(a) in err and str(b) in err and message in err


def test_compare_needs_the_per_record_table(tmp_path: Path, capsys):
    from xcam.cli import main

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"summary": {}, "records": []}))
    with pytest.raises(SystemExit):
        main(["evaluate", "--compare", str(old), str(old)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(old) in err and "per-record table" in err


def test_a_class_on_one_image_gets_no_interval():
    records = _hits(30, 10) + [_record("one.png", "Nodule"), _record("one.png", "Nodule", gt=(10.0, 10.0, 40.0, 40.0))]
    s = _summary(records, 200)
    assert interval(s["classes"]["Nodule"], ("pointing",)) is None and s["classes"]["Nodule"]["pointing"] == 1.0
    assert interval(s["classes"]["Mass"], ("pointing",)) is not None
    assert interval(s["mean"], ("pointing",)) is not None


def test_compares_without_output_do_not_overwrite_each_other(tmp_path: Path, capsys, monkeypatch):
    from xcam.cli import main

    monkeypatch.chdir(tmp_path)
    for name, hits in (("mlp", 30), ("lse", 90), ("pylon", 60)):
        (tmp_path / name).mkdir()
        _pair(tmp_path / name, hits, hits)[0].rename(tmp_path / name / "results.json")
    for b in ("lse", "pylon"):
        try:
            main(["evaluate", "--compare", "mlp/results.json", f"{b}/results.json", "--bootstrap", "50"])
        except SystemExit as exc:
            assert exc.code in (0, None), capsys.readouterr().err
    assert "eval/compare_mlp_vs_pylon/compare.md" in capsys.readouterr().out
    lse = json.loads((tmp_path / "eval" / "compare_mlp_vs_lse" / "compare.json").read_text())
    pylon = json.loads((tmp_path / "eval" / "compare_mlp_vs_pylon" / "compare.json").read_text())
    assert lse["mean"]["pointing"]["diff"] == pytest.approx(0.25)  # Mass 0.25 → 0.75, Nodule unchanged
    assert pylon["mean"]["pointing"]["diff"] == pytest.approx(0.125)
