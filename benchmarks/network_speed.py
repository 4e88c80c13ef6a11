"""What the context network costs on this CPU, and what the usual speed-ups buy.

The network is most of inference time at 512 x 512 (see ``speed.py``). This times one forward
pass of the default model (K = 3, width 32, mean image) on batches of 512 x 512 frames, as
inference calls it (4 frames a call), in several forms, and reports each as frames per second
and as a ratio against the plain float32 model timed in the same process. Variants:

- ``fp32``: the model as inference runs it (NCHW, eager, ``torch.inference_mode``);
- ``channels_last``: model and inputs in NHWC memory format (oneDNN's preferred layout);
- ``jit_freeze``: ``torch.jit.trace`` then ``torch.jit.freeze`` (conv + activation fusion);
- ``compile``: ``torch.compile`` (Inductor, C++ code generation);
- ``bf16``: autocast to bfloat16 (no native bf16 on CPUs without AVX512-BF16 or AMX);
- ``int8_dynamic``: ``torch.ao`` dynamic quantisation (only linear layers: our convolutions
  stay float, listed to show it is no route);
- ``onnxruntime``: exported to ONNX and run by ONNX Runtime where it is importable;
- ``width16`` and ``width24``: narrower networks (a quality trade, not a free speed-up).

Each variant's output is compared with the plain model's (largest absolute difference of the
location, in scaled units), since a faster path that changes results is not the same model.

Usage::

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/network_speed.py --threads 1
    python benchmarks/network_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from calmdown.network import ContextNet
from calmdown.runtime import inference_network

Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _time(fn: Forward, mean: torch.Tensor, frames: torch.Tensor, repeats: int) -> float:
    """Seconds per call: best of ``repeats`` after two warm-up calls."""
    with torch.inference_mode():
        for _ in range(2):
            fn(mean, frames)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(mean, frames)
            best = min(best, time.perf_counter() - t0)
    return best


def _variants(
    net: ContextNet, mean: torch.Tensor, frames: torch.Tensor, only: list[str] | None
) -> dict[str, Forward]:
    out: dict[str, Forward] = {"fp32": net}

    # What calmdown runs (calmdown.runtime): PyTorch channels-last, and ONNX Runtime.
    out["channels_last"] = inference_network(net, torch.device("cpu"), "torch")

    def jit_freeze() -> Forward:
        with torch.inference_mode():
            traced = torch.jit.trace(net, (mean, frames))
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def compiled() -> Forward:
        return torch.compile(net, dynamic=False)

    def bf16(m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loc, scale = net(m, f)
        return loc.float(), scale.float()

    def int8_dynamic() -> Forward:
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(net, {torch.nn.Conv2d, torch.nn.Linear}, dtype=torch.qint8)

    def onnxruntime() -> Forward:
        return inference_network(net, torch.device("cpu"), "onnxruntime")

    def narrower(width: int) -> Callable[[], Forward]:
        return lambda: ContextNet(net.context_frames, width).eval()

    builders: dict[str, Callable[[], Forward]] = {
        "jit_freeze": jit_freeze,
        "compile": compiled,
        "int8_dynamic": int8_dynamic,
        "onnxruntime": onnxruntime,
        "width16": narrower(16),
        "width24": narrower(24),
    }
    out["bf16"] = bf16
    for name, build in builders.items():
        if only and name not in only:  # built only when timed (torch.compile takes minutes)
            continue
        try:
            out[name] = build()
        except Exception as exc:  # noqa: BLE001  (a variant that cannot be built is reported)
            out[name] = _failed(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    return out


class _failed:
    def __init__(self, reason: str):
        self.reason = reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="frames per network call")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None, help="variants to time")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "network_speed.json",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ContextNet(3, 32).eval()
    with torch.no_grad():  # a trained head: the default one is zero (output = mean image)
        for p in net.head.parameters():
            p.normal_(0, 0.05)
    rng = np.random.default_rng(0)
    shape = (args.batch, 1, args.size, args.size)
    mean = torch.from_numpy(rng.gamma(2.0, 1.0, shape).astype(np.float32))
    frames = torch.from_numpy(rng.poisson(mean.numpy().repeat(6, axis=1)).astype(np.float32))
    with torch.inference_mode():
        ref_loc = net(mean, frames)[0]
    rows = []
    base_s = None
    for name, fn in _variants(net, mean, frames, args.only).items():
        if args.only and name not in args.only and name != "fp32":
            continue
        if isinstance(fn, _failed):
            rows.append({"variant": name, "error": fn.reason})
            print(f"{name:>14}  not run: {fn.reason}")
            continue
        try:
            seconds = _time(fn, mean, frames, args.repeats)
            with torch.inference_mode():
                loc = fn(mean, frames)[0]
        except Exception as exc:  # noqa: BLE001  (reported in the table)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append({"variant": name, "error": reason})
            print(f"{name:>14}  failed: {reason}")
            continue
        if base_s is None:
            base_s = seconds
        diff = float((loc.float() - ref_loc).abs().max()) if not name.startswith("width") else None
        rows.append(
            {
                "variant": name,
                "seconds_per_call": seconds,
                "frames_per_s": args.batch / seconds,
                "speedup": base_s / seconds,
                "max_abs_diff": diff,
            }
        )
        print(
            f"{name:>14}  {args.batch / seconds:6.2f} frames/s  x{base_s / seconds:5.2f}"
            f"  max |diff| {'-' if diff is None else f'{diff:.2e}'}"
        )
    result = {
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
