"""torchxrayvision's weight catalogue, as plain data (no torch import).

Kept equal to ``torchxrayvision.models.model_urls`` by ``tests/test_classifiers.py``; the
operating-point thresholds are read from torchxrayvision itself when a model is built.
"""

from __future__ import annotations

RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"

XRV_LABELS: tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
    "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
    "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)


def _only(*keep: str) -> tuple[str, ...]:
    """The 18-output label vector with every label not in ``keep`` blanked ("")."""
    return tuple(label if label in keep else "" for label in XRV_LABELS)


_NIH14 = XRV_LABELS[:14]
_CHEX = ("Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia", "Cardiomegaly",
         "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")

# variant -> (file name, labels, training data)
DENSENET_VARIANTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "densenet121-res224-all": (
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        XRV_LABELS, "NIH, PadChest, CheXpert, MIMIC-CXR (chexpert labels), Google, OpenI, RSNA/Kaggle"),
    "densenet121-res224-nih": (
        "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _only(*_NIH14), "NIH ChestX-ray14"),
    "densenet121-res224-pc": (
        "pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _only(*_NIH14, "Fracture"), "PadChest"),
    "densenet121-res224-chex": (
        "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _only(*_CHEX), "CheXpert (Stanford)"),
    "densenet121-res224-rsna": (
        "kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _only("Pneumonia", "Lung Opacity"),
        "RSNA Pneumonia Challenge (Kaggle)"),
    "densenet121-res224-mimic_nb": (
        "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _only(*_CHEX),
        "MIMIC-CXR (NegBio labels)"),
    "densenet121-res224-mimic_ch": (
        "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _only(*_CHEX),
        "MIMIC-CXR (CheXpert labels)"),
}

RESNET_VARIANTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "resnet50-res512-all": (
        "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
        XRV_LABELS,
        "PadChest, NIH, RSNA, SIIM, VinDr-CXR at 512 px"),
}

JF_LABELS: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Effusion")
JF_FILENAME = "baseline_models_jfhealthcare-DenseNet121_pre_train.pth"
