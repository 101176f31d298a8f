"""Stage 3: captions -> Sentence-BERT vectors. Loading and encoding is ``sbert.py`` (written to the file of
:mod:`utils.data.caption_vectors`); getting all-mpnet-base-v2 offline is ``sbert_download.py``."""
