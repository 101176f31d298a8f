"""What ``main.py`` runs: the loop (start with ``loop.py``), everything before the first step (``setup.py``),
the InfoNCE loss, resuming from ``last.pt`` (``resume.py``) and DistributedDataParallel (``ddp.py``)."""
