"""Dataset-level evaluation of weakly supervised localization (``xcam evaluate``).

* :mod:`~xcam.evaluation.groundtruth` — NIH ``BBox_List_2017.csv`` / ``Data_Entry_2017.csv`` readers.
* :mod:`~xcam.evaluation.cams` — models, CAM methods (plugins), layer fusion, ensembles → CAMs in
  the original image grid.
* :mod:`~xcam.evaluation.baselines` — the whole-lung-field box and the centre box.
* :mod:`~xcam.evaluation.protocol` — Wang et al. 2017 tables from per-box records.
* :mod:`~xcam.evaluation.report` — JSON, Markdown, plots and the best/worst montage.
* :mod:`~xcam.evaluation.run` — the whole run.
"""
