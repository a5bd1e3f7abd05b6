"""Model cards: one for every built-in classifier and variant (JSON + Markdown), the sha256 of a
weight file present in the (temporary, offline) cache, the metadata of an ``xcam train``
checkpoint, and the card an ONNX export carries in its metadata."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from xcam.core.cards import WEIGHT_FACTS, build_card, card_markdown, dataset_fingerprint

BUILT_INS = ("densenet121", "resnet50", "jfhealthcare", "mobilenetv3")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", BUILT_INS)
def test_every_built_in_variant_has_a_complete_card(pm, name: str):
    registration = pm.classifier(name)
    for variant in registration.variants:
        card = build_card(registration, variant.name)
        assert json.loads(json.dumps(card)) == card  # plain JSON
        assert card["model"] == name and card["variant"] == variant.name
        assert card["labels"] == [label for label in registration.variant_labels(variant) if label]
        assert card["input"]["size"] == registration.input_size and card["input"]["preprocessing"] == "xrv"
        assert card["license"] == WEIGHT_FACTS[variant.name]["license"]
        assert card["training_data"] and card["intended_use"] and len(card["limitations"]) >= 3
        assert card["file"]["name"] == variant.filename and card["file"]["url"] == variant.url
        md = card_markdown(card)
        assert md.startswith(f"# Model card: {name} ({variant.name})")
        for section in ("## Intended use", "## Known limitations", "## Metrics measured by xcam"):
            assert section in md
        assert card["license"] in md and ", ".join(card["labels"]) in md
    if name in ("densenet121", "resnet50"):
        assert card["license"].startswith("Apache-2.0") and "torchxrayvision" in card["source"]
    if name == "jfhealthcare":
        assert card["license"].startswith("Apache-2.0") and "2005.14480" in card["citation"]


def test_torchxrayvision_variants_are_all_in_the_table(pm):
    names = {v.name for n in ("densenet121", "resnet50", "jfhealthcare") for v in pm.classifier(n).variants}
    assert names <= set(WEIGHT_FACTS)
    assert "NIH ChestX-ray14" in WEIGHT_FACTS["densenet121-res224-nih"]["training_data"]
    assert "VinDr-CXR" in WEIGHT_FACTS["resnet50-res512-all"]["training_data"]


def test_card_of_a_present_file_has_its_sha256_and_is_written(xcam_cli, random_weights, tmp_path: Path):
    path = random_weights("densenet121", "densenet121-res224-nih")  # random weights under the real name
    code, out, err = xcam_cli("models", "--card", "densenet121:nih", "--output", str(tmp_path / "card.md"))
    assert code == 0, err
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["file"]["path"] == str(path) and card["file"]["sha256"] == _sha256(path)
    assert (tmp_path / "card.md").read_text() == out
    assert card["labels"] == list(card["labels"]) and len(card["labels"]) == 14
    code, out, _ = xcam_cli("models", "--card", "resnet50", "--json")
    assert code == 0 and json.loads(out)["file"]["sha256"] is None  # not downloaded: no hash
    code, _, err = xcam_cli("models", "--card", "densenet121:nope")
    assert code == 2 and err.startswith("error: classifier 'densenet121' has no weights 'nope'")
    code, _, err = xcam_cli("models", "--output", str(tmp_path / "x.md"))
    assert code == 2 and "--output and --metrics need --card" in err


def test_no_card_for_a_file_that_is_not_a_checkpoint(xcam_cli, tmp_path: Path, monkeypatch):
    """A card states facts read from the checkpoint, so a file that is not one gets an error, not a card."""
    junk = tmp_path / "junk.pt"
    junk.write_text("garbage")
    code, out, err = xcam_cli("models", "--card", f"mobilenetv3:{junk}", "--output", str(tmp_path / "card"))
    assert code == 2 and out == "" and err.strip() == (
        f"error: {junk}: not an `xcam train` checkpoint (it must load with torch.load(weights_only=True) as a dict "
        "holding 'model_state'): no card for it")
    assert not (tmp_path / "card.md").exists() and not (tmp_path / "card.json").exists()
    other = tmp_path / "weights.bin"
    other.write_text("x")
    monkeypatch.chdir(tmp_path)
    code, _, err = xcam_cli("models", "--card", f"mobilenetv3:{other.name}")
    assert code == 2 and f"({other.name} is a file: name a checkpoint with a path, e.g. ./{other.name}" in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One epoch of ``xcam train``'s loop on 24 small phantoms."""
    from xcam.datasets.phantom import generate_phantoms
    from xcam.train.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("card_train")
    generate_phantoms(root / "data", n=24, size=64, seed=2, lesion_rate=0.8)
    config = TrainConfig(imgpath=str(root / "data" / "images"), csvpath=str(root / "data" / "Data_Entry_2017.csv"),
                         out=str(root / "run"), epochs=1, batch_size=8, img_size=32, arch="mobilenet_v3_small",
                         labels=["Cardiomegaly", "Effusion"], progress=False, val_fraction=0.3, seed=1)
    return train(config, log=lambda _: None).out / "best.pt"


def test_trained_checkpoint_carries_its_metadata(pm, trained: Path, tmp_path: Path):
    import torch

    from xcam.train.data import read_label_table

    saved = torch.load(str(trained), map_location="cpu", weights_only=True)
    meta = saved["card"]
    table = read_label_table(str(trained.parents[1] / "data" / "Data_Entry_2017.csv"),
                             str(trained.parents[1] / "data" / "images"), ["Cardiomegaly", "Effusion"])
    assert meta["dataset_fingerprint"] == dataset_fingerprint(table.names, table.targets, table.labels)
    assert meta["labels"] == ["Cardiomegaly", "Effusion"] and meta["epochs"] == 1 and meta["best_epoch"] == 1
    assert meta["best_val_auc"] == pytest.approx(saved["best_val_auc"])
    assert meta["images"]["train"] + meta["images"]["validation"] == meta["images"]["total"] == len(table)
    assert meta["command_line"]
    # a different label table gives another fingerprint
    assert dataset_fingerprint(table.names, 1 - table.targets, table.labels) != meta["dataset_fingerprint"]

    card = build_card(pm.classifier("mobilenetv3"), str(trained))
    assert card["training"]["dataset_fingerprint"] == meta["dataset_fingerprint"]
    assert card["labels"] == ["Cardiomegaly", "Effusion"] and card["input"]["size"] == 32
    assert card["file"]["sha256"] == _sha256(trained)
    assert card["metrics"]["training"]["best_val_auc"] == pytest.approx(saved["best_val_auc"])
    assert meta["dataset_fingerprint"] in card_markdown(card)

    results = tmp_path / "eval" / "results.json"  # an `xcam evaluate` report of these weights
    results.parent.mkdir()
    summary = {"mean": {"pointing": 0.25, "iobb": {"0.25": 0.5}, "iou": {"0.1": 0.75}, "miou": 0.2, "auc": 0.6,
                        "n_boxes": 4},
               "images": {"found": 3}, "models": [{"name": "mobilenetv3", "weights": str(trained)}]}
    results.write_text(json.dumps({"summary": summary}))
    card = build_card(pm.classifier("mobilenetv3"), str(trained), evaluations=[results])
    (ev,) = card["metrics"]["evaluations"]
    assert ev["class_mean"]["T(IoBB>0.25)"] == 0.5 and ev["boxes"] == 4
    assert "T(IoBB>0.25) 0.500" in card_markdown(card)
    from xcam.core.errors import UsageError

    with pytest.raises(UsageError, match="evaluates mobilenetv3"):
        build_card(pm.classifier("densenet121"), None, evaluations=[results])


def test_onnx_export_carries_the_card(pm, trained: Path, tmp_path: Path):
    from xcam.export.onnx_export import export_model, read_metadata

    model = pm.classifier("mobilenetv3").build(str(trained))
    artifact = export_model(model, tmp_path / "m.onnx", exporter="legacy")
    card = json.loads(read_metadata(artifact.path)["card"])
    assert card["model"] == "mobilenetv3" and card["labels"] == ["Cardiomegaly", "Effusion"]
    assert card["file"]["sha256"] == _sha256(trained) == model.weights_sha256
    assert card["training"]["dataset_fingerprint"] == torch_card(trained)["dataset_fingerprint"]
    assert card["license"].startswith("yours")


def torch_card(path: Path) -> dict:
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)["card"]
