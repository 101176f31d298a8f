"""Stage 1 and the stored data every later stage reads: Clotho's caption tables (start with ``clotho.py``), own
``file_name,caption`` data (``pairs.py``), audio decoding, relevance files, the caption-vector file
(``caption_vectors.py``), and the training datasets and loaders over features and vectors (``datasets.py``)."""
