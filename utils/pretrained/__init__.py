"""Pretrained weights into this pipeline: stage 4's PANNs CNN14 transfer (``cnn14_transfer.py``) and the import
of the released DCASE 2023 baseline checkpoints (``dcase2023_import.py``)."""
