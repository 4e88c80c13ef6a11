"""Train Noise2Void (PyPI ``careamics``) on one movie within a time budget, then denoise it.

Runs in CAREamics' own virtual environment (``benchmarks/peers/.venvs/careamics``), never in
calmdown's. The movie goes in as a 3-D stack with time as the Z axis (``axes="ZYX"``), so the
blind-spot network sees the neighbouring frames. Settings are those of CAREamics' N2V defaults
and its 3-D example (patches 32 x 64 x 64 in Z, Y, X, batch 4, U-Net depth 2 with 32 initial
channels, Adam lr 1e-4 with ReduceLROnPlateau, 0.2 % of the pixels masked, mean/std
normalisation, flips and 90-degree rotations in XY), with the patch clipped to the movie. The
time budget is Lightning's own ``max_time`` (through ``trainer_params``); the weights at that
point are saved with ``trainer.save_checkpoint`` and used for the prediction, which is tiled.

Usage (CAREamics' venv)::

    .venvs/careamics/bin/python run_careamics.py --movie raw.tif --out den.tif --budget 180 \
        --json result.json
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import logging
import math
import platform
import shutil
import sys
import tempfile
import time
import types
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tifffile
import torch
from rss import peak_rss_mb  # beside this script


def stub_torchvision() -> None:
    """Put a stand-in ``torchvision`` in ``sys.modules`` unless a working one imports.

    CAREamics imports ``torchvision.transforms.functional`` at import time for its LVAE
    models only; N2V never calls it. Every release pins ``torchvision<=0.26`` (torch <= 2.11,
    a CUDA download here), and the torchvision built for torch 2.13 on PyPI is a CUDA build
    that does not load against the CPU torch. Any use of the stand-in raises. Lightning and
    torchmetrics are imported first, so that they see no torchvision and leave it alone.
    """
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install raises RuntimeError, not ImportError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    else:
        return
    import lightning.pytorch  # noqa: F401
    import torchmetrics  # noqa: F401

    class _Missing(types.ModuleType):
        def __getattr__(self, attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            raise RuntimeError(f"{self.__name__}.{attr}: torchvision is not installed")

    parent = None
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        mod = _Missing(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__path__ = []
        sys.modules[name] = mod
        if parent is not None:
            setattr(parent, name.rsplit(".", 1)[1], mod)
        parent = mod
    sys.modules["torchvision"].__version__ = "0+stub"


def fit(n: int, want: int, multiple: int) -> int:
    """``want`` clipped to ``n``, rounded down to a multiple of ``multiple`` (>= multiple)."""
    return max(multiple, min(want, n) // multiple * multiple)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movie", type=Path, help="(T, Y, X) tif")
    parser.add_argument("--out", type=Path, help="denoised float32 tif")
    parser.add_argument("--budget", type=float, help="training seconds")
    parser.add_argument("--json", type=Path, help="timings and settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64], help="Z(=T) Y X")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tile", type=int, nargs=3, default=[64, 128, 128], help="Z Y X")
    parser.add_argument("--tile-overlap", type=int, nargs=3, default=[16, 48, 48])
    parser.add_argument("--workdir", type=Path, default=None, help="kept if given")
    parser.add_argument("--check", action="store_true", help="only check that it imports")
    args = parser.parse_args()

    stub_torchvision()
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    if args.check:
        print("careamics", version("careamics"))
        return
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    work = Path(tempfile.mkdtemp(prefix="careamics_")) if args.workdir is None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    movie = tifffile.imread(args.movie).astype(np.float32)
    depth = 2  # CAREamics' U-Net default
    m = 2**depth
    patch = [fit(n, p, m) for n, p in zip(movie.shape, args.patch, strict=True)]
    tile = [fit(n, t, m) for n, t in zip(movie.shape, args.tile, strict=True)]
    # CAREamics wants square tiles (and patches) in Y and X: the smaller side for both.
    tile[1] = tile[2] = min(tile[1:])
    patch[1] = patch[2] = min(patch[1:])
    overlap = [min(o, t - m) // 2 * 2 for o, t in zip(args.tile_overlap, tile, strict=True)]
    # Its default of 8 validation patches leaves none to train on in a short movie: at most a
    # quarter of the whole patches on the movie's grid, where CAREamics takes them from.
    held = math.prod(n // p for n, p in zip(movie.shape, patch, strict=True))
    n_val = max(1, min(8, held // 4))
    config = create_advanced_n2v_config(
        experiment_name="peer_n2v",
        data_type="array",
        axes="ZYX",
        patch_size=patch,
        n_val_patches=n_val,
        batch_size=args.batch_size,
        num_epochs=100_000,  # the time budget stops training
        num_workers=0,
        trainer_params={"max_time": {"seconds": args.budget}, "accelerator": "cpu"},
        logger="none",
        seed=args.seed + 1,  # CAREamics wants a seed > 0
    )
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    careamist = CAREamist(config, work_dir=work, enable_progress_bar=False)
    careamist.train(train_data=movie)
    ckpt = work / "budget_end.ckpt"
    careamist.trainer.save_checkpoint(ckpt)
    train_s = time.perf_counter() - t0
    steps = int(careamist.trainer.global_step)
    epochs = int(careamist.trainer.current_epoch)
    rss_train = peak_rss_mb()

    t1 = time.perf_counter()
    pred, _ = careamist.predict(
        movie,
        tile_size=tuple(tile),
        tile_overlap=tuple(overlap),
        axes="ZYX",
        data_type="array",
        num_workers=0,
        checkpoint=ckpt,
    )
    infer_s = time.perf_counter() - t1
    denoised = np.asarray(pred[0], dtype=np.float32).reshape(movie.shape)
    tifffile.imwrite(args.out, denoised)

    result = {
        "method": "Noise2Void (CAREamics)",
        "train_s": train_s,
        "infer_s": infer_s,
        "infer_fps": movie.shape[0] / infer_s,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_train_mb": rss_train,
        "steps": steps,
        "epochs": epochs,
        "settings": {
            "axes": "ZYX (Z = time)",
            "patch_size": patch,
            "n_val_patches": n_val,
            "batch_size": args.batch_size,
            "tile_size": tile,
            "tile_overlap": overlap,
            "algorithm": config.algorithm_config.model_dump(mode="json"),
        },
        "threads": torch.get_num_threads(),
        "versions": {
            "careamics": version("careamics"),
            "lightning": version("lightning"),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("train_s", "infer_fps", "steps")}), file=sys.stderr)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
