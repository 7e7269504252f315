"""TrainConfig fields bound to widgets from one table (engine.training.options, which the CLI's options
read too): a field's widget is made from its type and Option (bool -> check box, int -> spin box,
float -> double spin box, a str with choices -> combo box, else a line edit), and its form row, load and
store follow from the same entry, so a settings page names its fields once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLayout,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from engine.training.config import TrainConfig
from engine.training.options import defaults, option


def make_widget(name: str, items: Sequence[tuple[str, str]] | None = None) -> QWidget:
    """The widget of TrainConfig field ``name``; ``items`` ((value, title) pairs) replace a combo's choices
    (those known only at run time: the backbones, the devices)."""
    opt, default = option(name), defaults()[name]
    if isinstance(default, bool):
        w: QWidget = QCheckBox(opt.label)
    elif isinstance(default, int):
        w = QSpinBox()
        w.setRange(int(opt.lo if opt.lo is not None else -(2**31)), int(opt.hi if opt.hi is not None else 2**31 - 1))
        w.setSingleStep(int(opt.step))
        if opt.special:
            w.setSpecialValueText(opt.special)
    elif isinstance(default, float):
        w = QDoubleSpinBox()
        w.setDecimals(opt.decimals)
        w.setRange(float(opt.lo if opt.lo is not None else -1e9), float(opt.hi if opt.hi is not None else 1e9))
        w.setSingleStep(float(opt.step))
    elif items is not None or opt.choices or opt.suggestions:
        w = QComboBox()
        pairs = items if items is not None else [(v, opt.titles.get(v, v)) for v in opt.choices or opt.suggestions]
        for value, title in pairs:
            w.addItem(title, value)
    else:
        w = QLineEdit()
        if opt.placeholder:
            w.setPlaceholderText(opt.placeholder)
    if opt.help:
        w.setToolTip(opt.help)
    return w


def read_widget(w: QWidget) -> Any:
    """The value a bound widget shows."""
    if isinstance(w, QCheckBox):
        return w.isChecked()
    if isinstance(w, (QSpinBox, QDoubleSpinBox)):
        return w.value()
    if isinstance(w, QComboBox):
        return str(w.currentData())
    return w.text().strip()


def write_widget(w: QWidget, name: str, value: Any) -> None:
    """Show ``value`` of field ``name``: a combo keeps a value none of its items has when the field's Option
    says so (added as an item, so that validation names it), else shows its first item."""
    if isinstance(w, QCheckBox):
        w.setChecked(bool(value))
    elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
        w.setValue(value)
    elif isinstance(w, QComboBox):
        i = w.findData(str(value))
        if i < 0 and option(name).keep_unknown:
            w.addItem(str(value), str(value))
            i = w.count() - 1
        w.setCurrentIndex(max(0, i))
    else:
        w.setText(str(value))


class Binding:
    """The widgets of some TrainConfig fields, made, laid out, loaded and stored from their Options."""

    def __init__(self, names: Iterable[str], items: dict[str, Sequence[tuple[str, str]]] | None = None) -> None:
        items = items or {}
        self.widgets: dict[str, QWidget] = {n: make_widget(n, items.get(n)) for n in names}

    def __getitem__(self, name: str) -> QWidget:
        return self.widgets[name]

    def add_row(self, form: QFormLayout, name: str, field: QWidget | QLayout | None = None) -> None:
        """The form row of ``name`` (its label and widget; a check box alone); ``field`` replaces the widget
        (a layout holding it beside others)."""
        w = self.widgets[name]
        label = option(name).label
        if isinstance(w, QCheckBox) and field is None:
            form.addRow(w)
        else:
            form.addRow(label, field if field is not None else w)

    def add_rows(self, form: QFormLayout, names: Iterable[str] | None = None) -> None:
        for name in names if names is not None else self.widgets:
            self.add_row(form, name)

    def load(self, cfg: TrainConfig) -> None:
        for name, w in self.widgets.items():
            write_widget(w, name, getattr(cfg, name))

    def store(self, cfg: TrainConfig) -> None:
        for name, w in self.widgets.items():
            setattr(cfg, name, read_widget(w))
