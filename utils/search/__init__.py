"""Searching audio with a trained run: the :class:`Retriever` (start with ``retriever.py``), its index of a folder
(``index.py``; shards on disk ``store.py``, built by ``indexer.py``), what needs no index (``embedder.py``),
``search.py``'s input/output modes, and the listening page (``page.py``, ``page_state.py``, ``page_static/``)."""
