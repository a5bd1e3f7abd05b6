"""The evaluation chain's defaults: what localized best on phantoms (docs/evaluation.md "What
localizes best"). A module of its own so the CLI can show them without importing NumPy."""

DEFAULT_METHOD = "layercam"
DEFAULT_MASK = "threshold"  # normalized CAM >= 0.5
DEFAULT_STRATEGY = "largest"
DEFAULT_ENSEMBLER = "mean"  # "product" won on the tuning set but not on held-out phantoms (docs/evaluation.md)
DEFAULT_AUG_SMOOTH = True  # test-time augmentation of each CAM: +0.15 pointing on held-out phantoms
DEFAULT_LAYERS = "auto"  # see xcam.evaluation.cams.AUTO_LAYERS
