"""Where trained models live and how to list them."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.vocabulary import data_home

log = logging.getLogger(__name__)

INFO_FILE = "info.json"
BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
STATE_FILE = "state.json"  # {"state": "running" | "finished" | "stopped", "iteration": N, "iterations": M}
RUN_STATES = ("running", "finished", "stopped")


def models_dir() -> Path:
    """$RETRIEVAL_EXPLORER_HOME/models if set, else <platformdirs user data dir>/retrieval-explorer/models
    (engine.vocabulary.data_home)."""
    return data_home() / "models"


def cache_dir() -> Path:
    """Feature caches of head-mode training, beside the models folder."""
    return models_dir().parent / "cache" / "training"


@dataclass
class TrainedModelInfo:
    name: str
    path: str               # the best checkpoint (usable as a backbone name)
    date: str
    data_root: str
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    state: str = ""          # the run's state.json: "finished", "stopped", "running" ("" = a run older than it)
    iteration: int = -1      # the iteration of its last checkpoint (state.json), -1 unknown
    iterations: int = -1     # the iterations it was asked for

    @property
    def title(self) -> str:
        """The name as model lists show it: an interrupted run says so, so that it is never taken for a
        finished one ("(stopped at iteration 40 of 100)"; "running" is a run in progress, or one whose
        program ended without stopping it)."""
        of = f" of {self.iterations}" if self.iterations >= 0 else ""
        if self.state == "stopped":
            return f"{self.name} (stopped at iteration {self.iteration}{of})"
        if self.state == "running":
            return f"{self.name} (not finished: iteration {self.iteration}{of})"
        return self.name


def write_run_state(folder: str | os.PathLike, state: str, iteration: int, iterations: int) -> None:
    """Record a run's state in its folder (atomically): "running" while it trains (after each checkpoint),
    "finished" or "stopped" (by the user) when it ends."""
    from engine.atomic import atomic_write_text

    if state not in RUN_STATES:
        raise ValueError(f"run state must be one of {RUN_STATES}, not {state!r}")
    atomic_write_text(Path(folder) / STATE_FILE, json.dumps({"state": state, "iteration": int(iteration),
                                                             "iterations": int(iterations)}))


def read_run_state(folder: str | os.PathLike) -> dict:
    """A run folder's state.json ({} when absent or unreadable: a run older than it)."""
    try:
        d = json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))
        return d if isinstance(d, dict) and d.get("state") in RUN_STATES else {}
    except (OSError, ValueError):
        return {}


def list_trained_models(directory: str | os.PathLike | None = None) -> list[TrainedModelInfo]:
    """Every trained model under ``directory`` (default models_dir()), newest first; broken entries skipped."""
    root = Path(directory) if directory is not None else models_dir()
    if not root.is_dir():
        return []
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        info_path = sub / INFO_FILE
        if not info_path.is_file() or not (sub / BEST_FILE).is_file():
            continue
        try:
            d = json.loads(info_path.read_text(encoding="utf-8"))
            st = read_run_state(sub)
            found.append(TrainedModelInfo(name=str(d.get("name", sub.name)), path=str(sub / BEST_FILE),
                                          date=str(d.get("date", "")), data_root=str(d.get("data_root", "")),
                                          config=dict(d.get("config", {})), metrics=dict(d.get("metrics", {})),
                                          state=str(st.get("state", "")), iteration=int(st.get("iteration", -1)),
                                          iterations=int(st.get("iterations", -1))))
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", info_path, exc)
    found.sort(key=lambda m: m.date, reverse=True)
    return found
