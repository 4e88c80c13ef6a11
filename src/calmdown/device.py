"""Choosing where PyTorch runs: resolved once, never ``.cuda()`` in the method code."""

from __future__ import annotations

import torch

from calmdown.errors import InputError

__all__ = ["resolve_device"]


def resolve_device(device: str = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device`.

    Parameters
    ----------
    device : str
        ``"auto"`` picks a CUDA GPU when present, then Apple's MPS, else the CPU; anything
        else is passed to :class:`torch.device` and checked for availability.

    Returns
    -------
    torch.device

    Raises
    ------
    InputError
        If the named device does not exist on this machine.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {device!r} was asked for but PyTorch sees no CUDA GPU here; "
            "use --device cpu or --device auto"
        )
    return dev
