"""Where trained models live and how to list them."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

INFO_FILE = "info.json"
BEST_FILE = "best.pt"
LAST_FILE = "last.pt"


def models_dir() -> Path:
    """$RETRIEVAL_EXPLORER_HOME/models if set, else <platformdirs user data dir>/retrieval-explorer/models."""
    home = os.environ.get("RETRIEVAL_EXPLORER_HOME")
    if home:
        return Path(home) / "models"
    import platformdirs

    return Path(platformdirs.user_data_dir("retrieval-explorer")) / "models"


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
            found.append(TrainedModelInfo(name=str(d.get("name", sub.name)), path=str(sub / BEST_FILE),
                                          date=str(d.get("date", "")), data_root=str(d.get("data_root", "")),
                                          config=dict(d.get("config", {})), metrics=dict(d.get("metrics", {}))))
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", info_path, exc)
    found.sort(key=lambda m: m.date, reverse=True)
    return found
