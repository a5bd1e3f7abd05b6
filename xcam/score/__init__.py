"""High-throughput batch scoring that loses nothing (``xcam score``).

* :mod:`xcam.score.inputs`  — streaming inputs (folder, glob, list file) and the compact done-set;
* :mod:`xcam.score.scorer`  — the scoring function both engines run: the chain (:mod:`xcam.chain`:
  decode → models → CAMs → boxes) turned into rows;
* :mod:`xcam.score.writers` — incremental, crash-safe CSV/JSONL/Parquet writers with resume;
* :mod:`xcam.score.local`   — the single-machine streaming engine;
* :mod:`xcam.score.ray_engine` — the same scoring on Ray Data;
* :mod:`xcam.score.job`     — one job end to end (what ``xcam score`` runs).

Nothing here imports torch or Ray at import time.
"""
