"""Turning a trained run into numbers: embedding clips and captions (``embedding.py``, also used by validation
and search), score matrices (``scoring.py``, postprocessing 01; ensembles: ``ensemble.py``), the metrics
(``metrics.py``, the only metrics module) and their intervals (``stats.py``), metrics files, submissions and rank
plots (``retrieval.py``, postprocessing 02), paired comparisons (``compare.py``, 03) and the results table
(``results_table.py``, 04)."""
