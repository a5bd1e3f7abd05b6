"""One module per CLI command (imported lazily by :mod:`xcam.cli`)."""
