"""The torch device a user names: "auto" (CUDA when torch sees a GPU), "cpu", "cuda", "cuda:1"..."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """Resolve ``name``; raise ValueError naming it when it is not a device or its GPU is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r} is not a torch device (cpu, cuda, cuda:1...)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU here")
    return device
