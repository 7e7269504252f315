"""What the wizard knows of the explorer window, and every call it makes into it, in one place.

The wizard and its pages never touch the window: the wizard receives an :class:`Explorer` (constructor
argument) that tells the window's current state (:class:`ExplorerState`: model, device, runtime, cache
folder, the open folder) and carries out the two hand-overs, "Use this model" and "Use this whitening".
:class:`WindowLink` is the explorer for a main window; its calls into the window are, all of them:

- read: ``window.key`` (the ModelSpec searched with), ``window.models`` (its ``device``, ``runtime``,
  ``cache_dir``), ``window.index.folder`` (the open folder, when one is open);
- ``window.use_model(checkpoint_path)``: "Use this model" (the wizard's run page, the Trained models dialog);
- ``window.set_descriptor(name)``, ``window.set_sizes("single" | "multi")``, then
  ``window.use_whitening(path)`` (False: refused): "Use it in the explorer" after a whitening.

A window lacking one of these methods is told so in the message (a script's stand-in window); nothing
else of the window is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.vocabulary import DEFAULT_DESCRIPTOR, DESCRIPTOR_SHORT, POOLING_DESCRIPTORS, sizes_label
from engine.whiten_folder import ModelBase, WhitenOutcome, model_base_of

log = logging.getLogger(__name__)

# the whitening's descriptors (the pooling ones, the default first), named as in tables
DESCRIPTORS = {d: DESCRIPTOR_SHORT[d] for d in sorted(POOLING_DESCRIPTORS, key=lambda d: d != DEFAULT_DESCRIPTOR)}


@dataclass(frozen=True)
class ExplorerState:
    """The window's current state as the wizard needs it (read when the wizard opens)."""

    spec: Any = None  # engine.collection.ModelSpec searched with, None: no window
    device: str = "cpu"
    runtime: str | None = None
    cache_dir: str | None = None
    folder: str = ""  # the folder open in the window ("" none)

    def model_base(self) -> ModelBase:
        """The model a whitening is learned for: the window's (its sizes the current choice) or the defaults."""
        return model_base_of(self.spec, device=self.device, runtime=self.runtime, cache_dir=self.cache_dir)


class Explorer(Protocol):
    """The wizard's window side: its state, and the two hand-overs (each returns what to tell the user)."""

    def state(self) -> ExplorerState: ...

    def use_model(self, path: str) -> str: ...

    def use_whitening(self, outcome: WhitenOutcome, sizes_choice: str) -> str: ...


class NoExplorer:
    """The wizard opened without a window (scripts, tests): the hand-overs say how to do them by hand."""

    def state(self) -> ExplorerState:
        return ExplorerState()

    def use_model(self, path: str) -> str:
        return f"No explorer window to load the model into. Choose it there as a backbone: {path}"

    def use_whitening(self, outcome: WhitenOutcome, sizes_choice: str) -> str:
        return (f"No explorer window to hand it to: use File > Use a whitening file… there, or --whitening "
                f"{outcome.path} on the command line.")


class WindowLink:
    """The explorer of a main window (see the module's docstring for every call it makes)."""

    def __init__(self, window: object) -> None:
        self.window = window

    def state(self) -> ExplorerState:
        w = self.window
        spec = getattr(w, "key", None)
        spec = spec if hasattr(spec, "backbone") else None
        models = getattr(w, "models", None)
        index = getattr(w, "index", None)
        folder = getattr(index, "folder", None) if index is not None else None
        return ExplorerState(spec=spec, device=str(getattr(models, "device", "cpu") or "cpu"),
                             runtime=getattr(models, "runtime", None) or None,
                             cache_dir=str(models.cache_dir) if getattr(models, "cache_dir", None) else None,
                             folder=str(folder) if folder else "")

    def use_model(self, path: str) -> str:
        """``window.use_model(path)``; "" when done, else a sentence saying why not."""
        use = getattr(self.window, "use_model", None)
        if use is None:
            return f"The explorer window has no use_model(); choose the model there as a backbone: {path}"
        try:
            use(path)
        except Exception as exc:  # shown to the user, never swallowed
            log.exception("use_model(%s) failed", path)
            return f"Loading the model failed: {type(exc).__name__}: {exc}"
        return ""

    def use_whitening(self, outcome: WhitenOutcome, sizes_choice: str) -> str:
        """Make the window search with the learned whitening: its descriptor and sizes set to the whitening's
        (when they differ), then ``use_whitening(path)``. Returns what happened, for the page."""
        w = self.window
        name = Path(outcome.path).name
        if not hasattr(w, "use_whitening"):
            return NoExplorer().use_whitening(outcome, sizes_choice)
        spec = self.state().spec
        if spec is not None and str(spec.backbone) != outcome.backbone:
            return (f"Not used: {name} was learned for the model {Path(outcome.backbone).name}, the explorer now "
                    f"uses {Path(str(spec.backbone)).name}. Choose that model there first.")
        if (spec is None or spec.descriptor != outcome.descriptor) and hasattr(w, "set_descriptor"):
            w.set_descriptor(outcome.descriptor)
        current = None if spec is None else ("multi" if spec.scales else "single")
        if hasattr(w, "set_sizes") and current != sizes_choice:
            w.set_sizes(sizes_choice)
        if w.use_whitening(outcome.path) is False:
            return f"The explorer refused {name} (its message says why)."
        sizes = sizes_label(outcome.sizes)
        return (f"The explorer now searches with {DESCRIPTORS.get(outcome.descriptor, outcome.descriptor)} at "
                f"{sizes}, whitened by {name}; an open folder is indexed again in the background.")


def explorer_of(window: object | None) -> Explorer:
    """The explorer for ``window`` (an Explorer is returned as it is; None: no window)."""
    if window is None:
        return NoExplorer()
    if isinstance(window, (NoExplorer, WindowLink)):
        return window
    return WindowLink(window)
