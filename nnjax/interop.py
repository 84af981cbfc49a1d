"""Weights from and to PyTorch and safetensors files: ``from_torch_state_dict``, ``to_torch_state_dict``,
``save_safetensors``, ``load_safetensors``, and the layers that give ported models PyTorch's conventions
(``TorchBatchNorm``, ``TorchFlatten``). torch is never imported; safetensors only when a file is read or written.
"""

from nnjax._src.interop import (
    CONVERTERS,
    Context,
    Converter,
    InteropError,
    TorchBatchNorm,
    TorchFlatten,
    from_torch_state_dict,
    load_safetensors,
    save_safetensors,
    to_torch_state_dict,
)

__all__ = [
    "CONVERTERS",
    "Context",
    "Converter",
    "InteropError",
    "TorchBatchNorm",
    "TorchFlatten",
    "from_torch_state_dict",
    "load_safetensors",
    "save_safetensors",
    "to_torch_state_dict",
]
