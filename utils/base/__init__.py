"""What every stage uses: the typed config (start with ``config.py``), where each artifact lives (``paths.py``),
the error types scripts turn into one-line messages (``errors.py``), atomic file I/O, devices, tables and plots."""
