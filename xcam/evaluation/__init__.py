"""Dataset-level evaluation of weakly supervised localization (``xcam evaluate``), on the chain.

* :mod:`~xcam.evaluation.run` — the chain over a box list's images → one record per box.
* :mod:`~xcam.evaluation.baselines` — the whole-lung-field box and the centre box.
* :mod:`~xcam.evaluation.protocol` — Wang et al. 2017 tables from per-box records.
* :mod:`~xcam.evaluation.report` — JSON, Markdown, plots and the best/worst montage.
* :mod:`~xcam.evaluation.bootstrap` — 95 % percentile-bootstrap intervals (patients resampled).
* :mod:`~xcam.evaluation.compare` — paired difference of two results (``evaluate --compare``).
* :mod:`~xcam.evaluation.saliency` with :mod:`~xcam.evaluation.faithfulness` (ROAD),
  :mod:`~xcam.evaluation.sanity` (cascading randomization) and
  :mod:`~xcam.evaluation.saliency_report` — explanation quality per CAM method (``xcam saliency``).

NIH's file formats are read by :mod:`xcam.core.nih`.
"""
