"""Choosing where PyTorch runs: resolved once, never ``.cuda()`` in the method code."""

from __future__ import annotations

import torch

from calmdown.errors import InputError

__all__ = ["native_bfloat16", "resolve_device", "training_dtype"]


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


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (not emulated).

    CUDA GPUs from Ampere on, and CPUs with AVX512-BF16 or AMX (oneDNN's test). On a CPU
    without them bfloat16 is emulated, about a hundred times slower than float32
    (``benchmarks/network_speed.py`` on an AVX2 machine).
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:  # a private test of oneDNN's; absent or failing means no
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def training_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Return the dtype training's convolutions autocast to (``None``: plain float32).

    Parameters
    ----------
    device : torch.device
        Where training runs.
    precision : {"auto", "float32", "bfloat16"}
        ``"auto"``: bfloat16 where the device computes it natively
        (:func:`native_bfloat16`), else float32.

    Raises
    ------
    InputError
        If bfloat16 is asked for on a device that would emulate it.
    """
    if precision == "float32":
        return None
    native = native_bfloat16(device)
    if precision == "bfloat16" and not native:
        raise InputError(
            f"--precision bfloat16 was asked for, but {device} has no native bfloat16 "
            "(a CPU needs AVX512-BF16 or AMX, a GPU Ampere or later) and would emulate it "
            "very slowly; use --precision auto or float32"
        )
    return torch.bfloat16 if native else None
