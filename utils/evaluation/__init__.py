"""Turning a trained run into numbers: embedding clips and captions (``embedding.py``, also used by validation
and search), score matrices (``scoring.py``, postprocessing 01), the metrics (``metrics.py``, the only metrics
module) and metrics files, submissions and rank plots (``retrieval.py``, postprocessing 02)."""
