"""The "Train XBM model" wizard, its live plot and the "Trained models" dialog.

Usage (the explorer's Training menu)::

    from retrieval_gui.wizard import TrainWizard
    TrainWizard(parent=window, main_window=window).show()
"""

from retrieval_gui.wizard.models_dialog import TrainedModelsDialog
from retrieval_gui.wizard.plot import LiveTrainingPlot
from retrieval_gui.wizard.wizard import TrainWizard

__all__ = ["LiveTrainingPlot", "TrainWizard", "TrainedModelsDialog"]
