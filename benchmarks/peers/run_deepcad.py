"""Train DeepCAD-RT (PyPI ``deepcad`` 1.2.0) on one movie within a time budget, then denoise it.

Runs in DeepCAD-RT's own virtual environment (``benchmarks/peers/.venvs/deepcad``), never in
calmdown's. It uses DeepCAD-RT's own ``training_class`` and ``testing_class`` with the settings
of its demo pipelines (``lr`` 5e-5, Adam betas 0.5/0.999, ``fmap`` 16, patches 150 x 150 x 150,
overlap 0.25 for training and 0.4 for testing, 6000 patches per epoch), with the patch clipped
to the movie. Everything that makes it run on a CPU is patched at run time, here:

- ``Tensor.cuda`` / ``Module.cuda`` are no-ops (DeepCAD-RT calls them unconditionally);
- the model is wrapped in ``nn.DataParallel`` without devices (a CPU pass-through) so that
  ``save_model``'s ``self.local_model.module`` exists, and ``torch.onnx.export`` (the ONNX copy
  it writes after every epoch) is a no-op;
- the training ``DataLoader`` stops yielding batches when the budget is spent (see
  ``_BudgetLoader``); the weights at that point are saved and tested;
- the stitched float result is taken from the test's accumulator instead of its file, which
  DeepCAD-RT casts to the input's integer type (``int32`` for float input).

Usage (DeepCAD-RT's venv)::

    .venvs/deepcad/bin/python run_deepcad.py --movie raw.tif --out den.tif --budget 180 \
        --json result.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tifffile
import torch
from rss import peak_rss_mb  # beside this script
from torch import nn


def patch_for_cpu() -> None:
    """Make DeepCAD-RT's unconditional ``.cuda()`` calls and ONNX export harmless on a CPU."""
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.onnx.export = lambda *a, **k: None  # type: ignore[assignment]


class _BudgetLoader:
    """A DataLoader whose iteration stops at a deadline; counts the batches it gave.

    A DeepCAD-RT step takes many seconds on a CPU, so the loader does not start a step that
    would end more than half a step past the deadline (the mean step time so far predicts it):
    training ends as near the budget as whole steps allow. At least one step is always made.
    """

    deadline = math.inf
    start = math.nan
    steps = 0

    def __init__(self, *args, **kwargs):
        self._loader = torch.utils.data.DataLoader(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        cls = _BudgetLoader
        for batch in self._loader:
            now = time.perf_counter()
            if cls.steps == 0:
                cls.start = now
            else:
                step = (now - cls.start) / cls.steps
                if now + step / 2 > cls.deadline:
                    return
            cls.steps += 1
            yield batch


class _ZerosRecorder:
    """Stands in for numpy inside ``deepcad.test_collection``; keeps the arrays ``zeros`` made.

    The first one per stack is the float accumulator the stitched result is written into.
    """

    def __init__(self) -> None:
        self.made: list[np.ndarray] = []

    def __getattr__(self, name: str):
        return getattr(np, name)

    def zeros(self, *args, **kwargs) -> np.ndarray:
        arr = np.zeros(*args, **kwargs)
        self.made.append(arr)
        return arr


def choose_settings(shape: tuple[int, int, int], args: argparse.Namespace) -> dict:
    """Return DeepCAD-RT's demo settings with the patch clipped to the movie."""
    t_len, y_len, x_len = shape
    # testing_class leaves the last (patch - gap) / 2 columns (rows) unwritten when a single
    # patch spans the frame, so the patch must be smaller than the frame: below it, a
    # multiple of 8.
    patch_xy = min(args.patch_xy, (min(y_len, x_len) - 1) // 8 * 8)
    # A training patch spans 2 * patch_t frames (odd frames in, even frames target) and needs
    # at least two start positions in time.
    patch_t = min(args.patch_t, (t_len - 2) // 2)
    if patch_t < 8 or patch_xy < 16:
        raise SystemExit(f"movie too small for DeepCAD-RT: {shape}")
    overlap = 0.25
    gap = int(patch_xy * (1 - overlap))
    n_w = (x_len - patch_xy) // gap + 1
    n_h = (y_len - patch_xy) // gap + 1
    # training_class.get_gap_t divides (T - 2 patch_t) by (s_num - 1) and floors it: keep the
    # time step >= 1 frame.
    size = min(args.train_datasets_size, n_w * n_h * (t_len - 2 * patch_t))
    return {
        "patch_x": patch_xy,
        "patch_y": patch_xy,
        "patch_t": patch_t,
        "overlap_factor": overlap,
        "test_overlap_factor": 0.4,
        "scale_factor": 1,
        "select_img_num": t_len,
        "train_datasets_size": size,
        "n_epochs": args.max_epochs,
        "lr": 0.00005,
        "b1": 0.5,
        "b2": 0.999,
        "fmap": 16,
        "GPU": "0",
        "num_workers": 0,
        "visualize_images_per_epoch": False,
        "save_test_images_per_epoch": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movie", type=Path, required=True, help="(T, Y, X) tif")
    parser.add_argument("--out", type=Path, required=True, help="denoised float32 tif")
    parser.add_argument("--budget", type=float, required=True, help="training seconds")
    parser.add_argument("--json", type=Path, required=True, help="timings and settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch-xy", type=int, default=150, help="demo: 150")
    parser.add_argument("--patch-t", type=int, default=150, help="demo: 150")
    parser.add_argument("--train-datasets-size", type=int, default=6000, help="demo: 6000")
    parser.add_argument("--max-epochs", type=int, default=10, help="demo: 10")
    parser.add_argument("--workdir", type=Path, default=None, help="kept if given")
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    patch_for_cpu()
    from deepcad import test_collection, train_collection

    work = Path(tempfile.mkdtemp(prefix="deepcad_")) if args.workdir is None else args.workdir
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for f in data.iterdir():
        f.unlink()
    movie = tifffile.imread(args.movie)
    tifffile.imwrite(data / "movie.tif", movie)
    settings = choose_settings(movie.shape, args)
    train_params = {k: v for k, v in settings.items() if k != "test_overlap_factor"}
    train_params |= {"datasets_path": str(data), "pth_dir": str(work / "pth")}
    train_params["output_dir"] = str(work / "results")
    train_params["onnx_dir"] = str(work / "onnx")

    train_collection.DataLoader = _BudgetLoader
    train_collection.training_class.distribute_GPU = lambda self: setattr(
        self, "local_model", nn.DataParallel(self.local_model)
    )

    t0 = time.perf_counter()
    _BudgetLoader.deadline = t0 + args.budget
    tc = train_collection.training_class(train_params)
    tc.run()
    for f in Path(tc.pth_path).glob("*.pth"):
        f.unlink()
    tc.save_model(98, _BudgetLoader.steps - 1)  # sorts last: E_99_Iter_<steps>.pth
    train_s = time.perf_counter() - t0
    rss_train = peak_rss_mb()

    test_params = {k: v for k, v in train_params.items() if k in ("patch_x", "patch_y")}
    test_params |= {
        "patch_t": settings["patch_t"],
        "overlap_factor": settings["test_overlap_factor"],
        "scale_factor": 1,
        "test_datasize": movie.shape[0],
        "datasets_path": str(data),
        "pth_dir": str(work / "pth"),
        "denoise_model": Path(tc.pth_path).name,
        "output_dir": str(work / "results"),
        "fmap": settings["fmap"],
        "GPU": "0",
        "num_workers": 0,
        "visualize_images_per_epoch": False,
        "save_test_images_per_epoch": False,
    }
    recorder = _ZerosRecorder()
    test_collection.np = recorder
    t1 = time.perf_counter()
    test = test_collection.testing_class(test_params)
    with torch.no_grad():
        test.run()
    infer_s = time.perf_counter() - t1
    denoised = recorder.made[0].astype(np.float32)
    if denoised.shape != movie.shape:
        raise SystemExit(f"DeepCAD-RT returned {denoised.shape}, expected {movie.shape}")
    if not np.all(denoised):
        raise SystemExit(f"DeepCAD-RT left {np.sum(denoised == 0)} pixel-frames unwritten")
    tifffile.imwrite(args.out, denoised)

    result = {
        "method": "DeepCAD-RT",
        "train_s": train_s,
        "infer_s": infer_s,
        "infer_fps": movie.shape[0] / infer_s,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_train_mb": rss_train,
        "steps": _BudgetLoader.steps,
        "patches_per_epoch": len(tc.name_list),
        "settings": settings,
        "threads": torch.get_num_threads(),
        "versions": {
            "deepcad": version("deepcad"),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "cpu_patches": "Tensor.cuda/Module.cuda no-ops, DataParallel without devices, "
        "onnx export no-op, float output taken before the integer cast",
    }
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("train_s", "infer_fps", "steps")}), file=sys.stderr)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
