"""Plots of training and of models (matplotlib, an optional extra: ``pip install 'nnjax[plots]'``).

Each function returns a ``matplotlib.figure.Figure`` and saves a PNG when given ``path=``.
"""

from nnjax._src.plots import (
    ACTIVATIONS,
    plot_activations,
    plot_confusion_matrix,
    plot_decision_boundary,
    plot_history,
    plot_images,
    plot_network,
)

__all__ = [
    "ACTIVATIONS",
    "plot_activations",
    "plot_confusion_matrix",
    "plot_decision_boundary",
    "plot_history",
    "plot_images",
    "plot_network",
]
