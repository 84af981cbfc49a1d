"""Metrics: ``metric(predictions, targets, ...) -> scalar``; usable under jit and vmap."""

from nnjax._src.metrics import accuracy, binary_accuracy, confusion_matrix, mae, r2_score, rmse, top_k_accuracy

__all__ = ["accuracy", "binary_accuracy", "confusion_matrix", "mae", "r2_score", "rmse", "top_k_accuracy"]
