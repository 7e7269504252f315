"""The training wizard: first a choice, then either training (data -> model -> loss -> run settings ->
summary -> live run) or a learned whitening (folder -> settings -> run and report; whiten_page.py).
:meth:`TrainWizard.nextId` routes between the two paths."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QSettings, Signal
from PySide6.QtWidgets import QMessageBox, QWidget, QWizard

from engine.training.config import TrainConfig
from retrieval_gui.wizard.explorer import Explorer, explorer_of
from retrieval_gui.wizard.models_dialog import TrainedModelsDialog
from retrieval_gui.wizard.pages import DataPage, LossPage, ModelPage, RunPage, RunSettingsPage, SummaryPage
from retrieval_gui.wizard.whiten_page import (
    ChoicePage,
    WhitenDataPage,
    WhitenOutcome,
    WhitenRunPage,
    WhitenSettings,
    WhitenSettingsPage,
)

log = logging.getLogger(__name__)

SETTINGS_KEY = "train_wizard/last_config"


# what to do with a run in progress when the wizard or the window is closed
KEEP_RUNNING, STOP_RUN, CANCEL_CLOSE = "background", "stop", "cancel"


def ask_about_run(parent: QWidget | None, text: str, choices: dict[str, str]) -> str:
    """Ask what to do with the running training: ``choices`` maps KEEP_RUNNING / STOP_RUN / CANCEL_CLOSE to
    button texts; returns the key clicked (CANCEL_CLOSE when the box is dismissed)."""
    roles = {KEEP_RUNNING: QMessageBox.ButtonRole.AcceptRole, STOP_RUN: QMessageBox.ButtonRole.DestructiveRole,
             CANCEL_CLOSE: QMessageBox.ButtonRole.RejectRole}
    box = QMessageBox(QMessageBox.Icon.Question, "Training is running", text, QMessageBox.StandardButton.NoButton,
                      parent)
    buttons = {box.addButton(label, roles[key]): key for key, label in choices.items()}
    box.exec()
    return buttons.get(box.clickedButton(), CANCEL_CLOSE)


def default_config() -> TrainConfig:
    """The wizard's first-time settings: the trainer's defaults (head mode, memory on)."""
    return TrainConfig(data_root="")


def config_from_settings(settings: QSettings | None = None) -> TrainConfig:
    """The settings of the last run started from the wizard (defaults where absent or unreadable)."""
    s = settings or QSettings()
    raw = s.value(SETTINGS_KEY, "")
    cfg = default_config()
    if not raw:
        return cfg
    try:
        d = json.loads(str(raw))
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        d = {k: v for k, v in d.items() if k in names}  # settings of an older/newer version: keep what fits
        d.setdefault("data_root", "")
        cfg = TrainConfig.from_dict(d)
    except (TypeError, ValueError) as exc:
        log.warning("ignoring unreadable wizard settings: %s", exc)
        return default_config()
    return cfg


class TrainWizard(QWizard):
    """Trains an embedding, or learns a whitening, from the GUI. The window side is an
    ``explorer`` (retrieval_gui.wizard.explorer: the window's state, "use this model", "use this whitening");
    given a ``main_window`` instead, its WindowLink, which lists every call made into the window. A
    ``parent`` window's close asks first while a training runs.

    ``path``: "train" or "whiten" starts on that path; None asks first (the choice page), except when a
    ``config`` is given, which is a training's: it starts on the Data page, as scripts expect.

    Signals: ``trainingStarted(TrainConfig)``, ``trainingFinished(TrainResult)``, ``modelChosen(str)``
    (a checkpoint path the user asked to use), ``whiteningLearned(WhitenOutcome)`` (a whitening saved).
    """

    trainingStarted = Signal(object)
    trainingFinished = Signal(object)
    modelChosen = Signal(str)
    whiteningLearned = Signal(object)

    def __init__(self, parent: QWidget | None = None, main_window: object | None = None, *,
                 config: TrainConfig | None = None, path: str | None = None,
                 explorer: Explorer | None = None) -> None:
        super().__init__(parent)
        if path not in (None, "train", "whiten"):
            raise ValueError(f"path must be 'train', 'whiten' or None, got {path!r}")
        self.main_window = main_window
        # every call into the window goes through this (retrieval_gui.wizard.explorer)
        self.explorer: Explorer = explorer or explorer_of(main_window)
        self.explorer_state = self.explorer.state()
        self.setWindowTitle("Train a model or learn a whitening")
        self.setWizardStyle(QWizard.WizardStyle.ClassicStyle)
        self.setOption(QWizard.WizardOption.NoBackButtonOnLastPage, True)
        self.setOption(QWizard.WizardOption.NoCancelButtonOnLastPage, True)
        self.resize(1000, 820)
        self._config = config or config_from_settings()
        self.model_page = ModelPage()
        self.loss_page = LossPage()
        self.run_settings_page = RunSettingsPage(image_size=lambda: self.model_page.fields["image_size"].value())
        self.data_page = DataPage(batch_classes=self.run_settings_page.p.value,
                                  image_split=lambda: self._config.image_split)
        self.summary_page = SummaryPage(self.config, self.data_page, self.run_settings_page.alike_choice)
        self.run_page = RunPage()
        self.settings_pages = (self.data_page, self.model_page, self.loss_page, self.run_settings_page)
        for page in (*self.settings_pages, self.summary_page, self.run_page):
            self.addPage(page)
        # the first choice and the whitening path (ids after the training pages, which keep theirs)
        self.choice_page = ChoicePage()
        self.whiten_data_page = WhitenDataPage()
        self.whiten_settings_page = WhitenSettingsPage(self.whiten_data_page)
        self.whiten_run_page = WhitenRunPage(lambda: (self.whiten_settings(), self.whiten_settings_page.base,
                                                      self.whiten_settings_page.output()))
        self.choice_id = self.addPage(self.choice_page)
        self.whiten_ids = [self.addPage(p) for p in (self.whiten_data_page, self.whiten_settings_page,
                                                     self.whiten_run_page)]
        self.data_id = next(i for i in self.pageIds() if self.page(i) is self.data_page)
        start = path or ("train" if config is not None else None)
        self.choice_page.set_choice(start or "train")
        self.setStartId({None: self.choice_id, "train": self.data_id, "whiten": self.whiten_ids[0]}[start])
        self.load_whiten_settings(WhitenSettings.from_settings())
        self.whiten_run_page.useRequested.connect(self.use_whitening)
        self.whiten_run_page.learned.connect(self.whiteningLearned)
        self.set_config(self._config)
        self.run_page.useModelRequested.connect(self.use_model)
        self.run_page.models_button.clicked.connect(self.show_trained_models)
        self.currentIdChanged.connect(self._on_page)
        self.models_dialog: TrainedModelsDialog | None = None
        self.use_message = ""
        self.in_background = False  # hidden while its run goes on ("Keep training in the background")
        if parent is not None:  # closing the window asks first while a run goes on
            parent.installEventFilter(self)

    # -- settings ----------------------------------------------------------------------------------
    def config(self) -> TrainConfig:
        """A TrainConfig from what the pages show now."""
        cfg = dataclasses.replace(self._config, extra=dict(self._config.extra))
        for page in self.settings_pages:
            page.store(cfg)
        return cfg

    def set_config(self, cfg: TrainConfig) -> None:
        """Show ``cfg`` in the pages; a wizard still on its first choice goes on to the training path (a
        config is a training's)."""
        self._config = cfg
        for page in self.settings_pages:
            page.load(cfg)
        self.data_page.request_scan()  # counted in a worker: it walks the whole data folder
        if self.currentId() == self.choice_id:
            self.choice_page.set_choice("train")
            self.next()

    # -- routing -----------------------------------------------------------------------------------
    def nextId(self) -> int:  # noqa: N802 - the choice page opens one path; each path ends on its run page
        current = self.currentId()
        if current == self.choice_id:
            return self.whiten_ids[0] if self.choice_page.choice() == "whiten" else self.data_id
        if current in self.whiten_ids:
            i = self.whiten_ids.index(current)
            return self.whiten_ids[i + 1] if i + 1 < len(self.whiten_ids) else -1
        if self.page(current) is self.run_page:
            return -1
        return super().nextId()

    # -- the whitening path ------------------------------------------------------------------------
    def load_whiten_settings(self, s: WhitenSettings) -> None:
        """Show ``s`` on the whitening pages, for the main window's model; its sizes default to the
        window's current choice, its folder to the training data folder when none was remembered."""
        base = self.explorer_state.model_base()
        if base.sizes is not None:
            s.sizes = base.sizes
        self.whiten_settings_page.set_base(base)
        edit = self.whiten_data_page.folder_edit
        edit.blockSignals(True)  # counted when its page is shown, not on every opening of the wizard
        offered = self.explorer_state.folder  # the window's open folder: offered, and shown when none is remembered
        edit.setText(s.folder or offered or self._config.data_root)
        edit.blockSignals(False)
        self.whiten_data_page.offer_folder(offered)
        self.whiten_settings_page.load(s)

    def whiten_settings(self) -> WhitenSettings:
        """The whitening settings the pages show now."""
        s = WhitenSettings(folder=self.whiten_data_page.folder())
        self.whiten_settings_page.store(s)
        return s

    def use_whitening(self, outcome: WhitenOutcome) -> str:
        """Hand a learned whitening to the explorer (its descriptor and sizes set to the whitening's, then
        main_window.use_whitening) and say on the run page what happened."""
        message = self.explorer.use_whitening(outcome, self.whiten_run_page.settings.sizes
                                              if self.whiten_run_page.settings else "single")
        self.whiten_run_page.use_label.setText(message)
        return message

    def save_settings(self, cfg: TrainConfig) -> None:
        d = cfg.to_dict()
        d["out_dir"] = ""  # never reuse a run's folder
        QSettings().setValue(SETTINGS_KEY, json.dumps(d))

    # -- running -----------------------------------------------------------------------------------
    def _on_page(self, page_id: int) -> None:
        if self.page(page_id) is self.run_page and not self.run_page.running and self.run_page.result is None:
            self.start_training()

    def start_training(self) -> None:
        """Validate the settings, remember them, and start train() on a worker thread."""
        from engine.training.launch import train
        from retrieval_gui.workers import start_task

        cfg = self.config()
        problems = cfg.validate()
        if problems:
            self.run_page.on_error("The settings are not valid: " + "; ".join(problems), "")
            return
        self.save_settings(cfg)
        handle = start_task(train, cfg, parent=self, name="train", event_kwarg="on_event")
        self.run_page.attach(handle, cfg)
        handle.result.connect(self.trainingFinished)
        handle.finished.connect(self._training_ended)
        self.trainingStarted.emit(cfg)

    @property
    def handle(self):
        """The running (or last) training task, a workers.TaskHandle, or None."""
        return self.run_page.handle

    def use_model(self, path: str) -> None:
        """Load ``path`` into the explorer (main_window.use_model) and say how it went on the run page."""
        problem = self.explorer.use_model(path)
        self.use_message = problem or f"Loading the model into the explorer: {path}"
        self.run_page.use_label.setText(self.use_message)
        self.modelChosen.emit(path)

    def show_trained_models(self) -> TrainedModelsDialog:
        """Open the "Trained models" dialog (non-modal); picking a model calls main_window.use_model."""
        dlg = TrainedModelsDialog(self, main_window=self.explorer)
        dlg.modelChosen.connect(self.modelChosen)
        self.models_dialog = dlg
        dlg.show()
        return dlg

    # -- closing -----------------------------------------------------------------------------------
    def _run_text(self) -> str:
        page = self.run_page
        where = Path(page.last_checkpoint).parent if page.last_checkpoint else None
        return (f"Training is still running (iteration {page.iteration_label.text()})."
                + (f" Its checkpoints so far are in {where}." if where else ""))

    def ask_close(self, *, window: bool) -> str:
        """Ask what to do with the running training when the wizard (``window`` False) or the explorer window
        is closed: KEEP_RUNNING (the wizard only: it hides and comes back when the run ends), STOP_RUN (stop
        after the current step; last.pt and best.pt are kept and the run is listed as stopped) or
        CANCEL_CLOSE."""
        choices = {} if window else {KEEP_RUNNING: "Keep training in the background"}
        choices[STOP_RUN] = "Stop and keep the last checkpoint"
        choices[CANCEL_CLOSE] = "Keep training" if window else "Cancel"
        return ask_about_run(self, self._run_text() + (" Closing the explorer ends it." if window else ""), choices)

    def _run_goes_on(self) -> bool:
        """A training runs and was not asked to stop (a stopping one ends by itself: nothing to ask)."""
        page = self.run_page
        return page.training and not page.handle.worker.cancelled

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - the window's close asks first
        if obj is self.parent() and event.type() == QEvent.Type.Close and self._run_goes_on():
            if self.ask_close(window=True) == CANCEL_CLOSE:
                event.ignore()
                return True
            self.run_page.stop(wait_ms=60_000)
        return super().eventFilter(obj, event)

    def remember_settings(self) -> None:
        """Keep what the pages show for the next opening (also on Cancel): the training settings and the
        whitening's."""
        self.save_settings(self.config())
        self.whiten_settings().remember()

    def _training_ended(self) -> None:
        if self.in_background:  # the run went on while the wizard was hidden: it shows the result now
            self.in_background = False
            self.show()
            self.raise_()

    def done(self, result: int) -> None:  # noqa: D102 - a running training asks first (stop, keep, cancel)
        self.remember_settings()
        if self._run_goes_on():
            choice = self.ask_close(window=False)
            if choice == CANCEL_CLOSE:
                return
            if choice == KEEP_RUNNING:
                self.in_background = True
                self.hide()
                return
        if self.run_page.running:
            self.run_page.stop(wait_ms=60_000)
        if self.whiten_run_page.running:  # a whitening stopped is never saved
            self.whiten_run_page.stop(wait_ms=60_000)
        self.in_background = False
        super().done(result)
