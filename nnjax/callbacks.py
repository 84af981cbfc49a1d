"""Callbacks for ``fit``: ``(epoch, train_state, logs) -> stop?``; metric writers, early stopping, best model."""

from nnjax._src.callbacks import (
    BestModel,
    CSVLogger,
    EarlyStopping,
    JSONLLogger,
    LearningRateLogger,
    TensorBoardLogger,
    host_copy,
)

__all__ = ["BestModel", "CSVLogger", "EarlyStopping", "JSONLLogger", "LearningRateLogger", "TensorBoardLogger", "host_copy"]
