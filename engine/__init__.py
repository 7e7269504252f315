"""Retrieval engine: image loading, descriptor extraction, indexing, search, training, evaluation.

Nothing in this package imports Qt; long work is a plain function taking ``progress`` and
``should_stop`` callbacks (see :mod:`engine.callbacks`), wrapped for the GUI by
``retrieval_gui.workers``.
"""
