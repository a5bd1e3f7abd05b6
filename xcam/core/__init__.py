"""Core of xcam: plugin host, typed registrations, config, image I/O, preprocessing, weights, metrics.

Nothing in this package imports torch at module import time, except the modules whose job is to
run models (``xcam.core.model``, ``xcam.core.weights`` loading functions import it lazily).
"""
