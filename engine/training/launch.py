"""train(config): starts a run, in this process or as one rank of a process group (under torchrun), and
drives it through its steps. The run classes live in engine.training.trainer (one process) and
engine.training.distributed (one rank); the choice between them is made here, above both."""

from __future__ import annotations

import os
from collections.abc import Callable

from engine.callbacks import resolve
from engine.training import distributed
from engine.training.config import TrainConfig
from engine.training.trainer import TrainEvent, TrainResult, _Run


def train(config: TrainConfig, *, progress: Callable[[int, int, str], None] | None = None,
          should_stop: Callable[[], bool] | None = None, on_event: Callable[[TrainEvent], None] | None = None,
          resume_from: str | os.PathLike | None = None) -> TrainResult:
    """Train an embedding per ``config``; see engine.training.trainer's docstring. Raises ValueError for bad
    settings or data (the message says what to change). ``resume_from``: a ``last.pt`` to continue exactly
    (its config is used; ``iterations`` and ``device`` come from ``config``). A new run never writes into
    a folder that holds another run (see :func:`engine.training.trainer.claim_run_folder`)."""
    progress, should_stop = resolve(progress, should_stop)
    emit = on_event or (lambda e: None)
    with distributed.context(config.device) as ctx:   # under torchrun: this process's rank; else None
        if ctx is None:
            return _run(_Run(config, progress, should_stop, emit, resume_from))
        return _run(distributed.DistributedRun(ctx, config, progress, should_stop, emit, resume_from))


def _run(run: _Run) -> TrainResult:
    run.prepare_data()
    run.open_folder()
    run.build_optimisation()
    if run.ckpt is None:
        run.validate_untrained()
    else:
        run.restore()
    run.loop()
    return run.finish()
