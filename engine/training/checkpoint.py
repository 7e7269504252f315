"""Checkpoint files: written atomically, read with torch.load(weights_only=True).

``last.pt`` holds everything needed to resume (model, optimizer, memory, RNG states, iteration,
history); ``best.pt`` the model selected on the validation classes (config + weights + metrics),
which is what load_trained_backbone reads.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import torch

from engine.atomic import atomic_write_text, atomic_write_with
from engine.training.registry import INFO_FILE
from models.embedding import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, read_checkpoint


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Atomically torch.save ``payload`` plus the format header."""
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "date": _dt.datetime.now().isoformat(timespec="seconds"), **payload}
    atomic_write_with(path, lambda tmp: torch.save(data, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint as a dict; ValueError for a damaged or foreign file."""
    return read_checkpoint(path)


def write_info(folder: str | os.PathLike, name: str, data_root: str, config: dict, metrics: dict) -> None:
    """info.json beside the checkpoints, for list_trained_models."""
    info = {"name": name, "date": _dt.datetime.now().isoformat(timespec="seconds"), "data_root": data_root,
            "config": config, "metrics": metrics}
    atomic_write_text(Path(folder) / INFO_FILE, json.dumps(info, indent=1, default=str))
