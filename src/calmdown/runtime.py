"""How the trained network is executed at inference: PyTorch, or ONNX Runtime on a CPU.

On a CPU the network is most of the inference time, and the same weights run about twice as fast
through ONNX Runtime as through PyTorch's eager convolutions (``benchmarks/network_speed.py``:
8.4 against 4.3 frames per second at 512 x 512 on one core of an AVX2 machine, 14.6 against 7.7
on two). PyTorch's own NHWC (channels-last) layout gains 1.28x and is what runs without ONNX
Runtime. Results agree with the plain PyTorch model to float rounding (1e-6 of the scaled
values). Training always runs in PyTorch; only inference changes.

ONNX Runtime comes with ``pip install calmdown[onnx]``; :func:`inference_network` picks it when
importable (``runtime="auto"``), and says how to install it when asked for by name.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Literal

import torch

from calmdown.errors import InputError
from calmdown.network import ContextNet

__all__ = ["InferenceNetwork", "Runtime", "inference_network", "onnxruntime_available"]

logger = logging.getLogger(__name__)

_EXPORT_LOCK = threading.Lock()
"""PyTorch's ONNX exporter keeps global state: two threads (Dask workers) must not export
at once."""

Runtime = Literal["auto", "torch", "onnxruntime"]

InferenceNetwork = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(mean, frames) -> (loc, scale)`` with the shapes of :meth:`ContextNet.forward`."""


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's package are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def inference_network(
    net: ContextNet, device: torch.device, runtime: Runtime = "auto"
) -> InferenceNetwork:
    """Wrap a trained network for fast inference on ``device``.

    Parameters
    ----------
    net : ContextNet
        The trained network (left unchanged).
    device : torch.device
        Where inference runs. ONNX Runtime is used on the CPU only.
    runtime : {"auto", "torch", "onnxruntime"}
        ``"auto"``: ONNX Runtime on a CPU when installed, else PyTorch.

    Returns
    -------
    callable
        ``(mean, frames) -> (loc, scale)``, tensors on ``device``.

    Raises
    ------
    InputError
        If ONNX Runtime is asked for but not installed, or asked for on a GPU.
    """
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise InputError(
                f"--runtime onnxruntime runs on the CPU, but the device is {device}; use "
                "--device cpu, or --runtime torch to run on the GPU"
            )
        if not onnxruntime_available():
            raise InputError(
                "--runtime onnxruntime needs ONNX Runtime; install it with "
                "pip install 'calmdown[onnx]', or use --runtime torch"
            )
    use_ort = device.type == "cpu" and (
        runtime == "onnxruntime" or (runtime == "auto" and onnxruntime_available())
    )
    if use_ort:
        return _OnnxNetwork(net)
    if device.type == "cpu":
        return _ChannelsLastNetwork(net)
    return net


class _ChannelsLastNetwork:
    """The PyTorch network with weights and inputs in NHWC layout (oneDNN's fast path)."""

    name = "torch"

    def __init__(self, net: ContextNet):
        self.net = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)

    def __call__(
        self, mean: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale = self.net(
            mean.contiguous(memory_format=torch.channels_last),
            frames.contiguous(memory_format=torch.channels_last),
        )
        return loc.contiguous(), scale.contiguous()


class _OnnxNetwork:
    """The network exported to ONNX (in memory) and run by ONNX Runtime on the CPU."""

    name = "onnxruntime"

    def __init__(self, net: ContextNet):
        import onnxruntime as ort

        cpu_net = copy.deepcopy(net).cpu().eval()
        n_in = 2 * cpu_net.context_frames + cpu_net.neighbour_channels
        example = (torch.zeros(1, 1, 16, 16), torch.zeros(1, n_in, 16, 16))
        axes = {0: "batch", 2: "height", 3: "width"}
        buffer = io.BytesIO()
        with _EXPORT_LOCK, warnings.catch_warnings():  # notices, not the user's business
            warnings.simplefilter("ignore")
            torch.onnx.export(
                cpu_net,
                example,
                buffer,
                input_names=["mean", "frames"],
                output_names=["loc", "scale"],
                dynamic_axes={"mean": axes, "frames": axes, "loc": axes, "scale": axes},
                dynamo=False,
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        # Idle threads must not spin between calls: the guard's tensor work runs in between.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        # No memory arena: it kept ~200 MB more resident at 512 x 512 (the largest activations
        # of a 4-frame batch, rounded up), and speed was the same within the machine's noise
        # (3.46-3.57 against 3.40-3.71 frames/s end to end, alternating runs).
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(
            buffer.getvalue(), opts, providers=["CPUExecutionProvider"]
        )
        # The export drops an input the network does not read (the mean image of a network
        # trained without it): feed only those the session has.
        self._inputs = {i.name for i in self.session.get_inputs()}
        logger.debug("network exported to ONNX Runtime %s", ort.__version__)

    def __call__(
        self, mean: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {"mean": mean, "frames": frames}
        loc, scale = self.session.run(
            None,
            {k: v.detach().contiguous().numpy() for k, v in feed.items() if k in self._inputs},
        )
        return torch.from_numpy(loc), torch.from_numpy(scale)
