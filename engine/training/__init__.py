"""Metric learning: P x K sampler, triplet/contrastive losses and miners, Cross-Batch Memory, train().

Import the pieces from their modules (``engine.training.launch.train``, ``...config.TrainConfig``,
``...registry.list_trained_models``); this package file stays light so the GUI can import it cheaply.
"""
