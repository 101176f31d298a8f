"""Stage 2: audio -> log-mel HDF5. The baseline's formula is ``logmel.py``; the resumable, atomic driver is
``extract.py``, its process pool ``workers.py`` and its per-clip part files ``parts.py``."""
