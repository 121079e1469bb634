"""Device and dtype choice."""

from __future__ import annotations

from typing import Any


def resolve_device(name: str) -> str:
    """'auto' picks CUDA, then Apple MPS, then the CPU."""
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str) -> Any:
    """'auto' is float16 on an accelerator and float32 on the CPU."""
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    return getattr(torch, name)
