"""Moved: the one definition of the retrieval metrics is engine.evaluation (its torch path)."""

from engine.evaluation import query_top1_torch as query_top1  # noqa: F401
from engine.evaluation import retrieval_metrics_torch as retrieval_metrics  # noqa: F401
