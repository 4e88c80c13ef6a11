"""Train DeepInterpolation (PyPI ``deepinterpolation`` 0.1.4) on one movie within a budget.

Runs in DeepInterpolation's own virtual environment (``benchmarks/peers/.venvs/
deepinterpolation``, Python 3.8, TensorFlow 2.4), never in calmdown's; keep this file valid
Python 3.8. It uses DeepInterpolation's own generator, network, trainer and inference classes
(through its JSON ``ClassLoader``) with the settings of its two-photon example
(``example_tiny_ophys_training.py``): ``SingleTifGenerator`` with 30 frames before and 30 after
the predicted one, ``unet_single_1024``, mean absolute error, RMSprop lr 1e-4, batch 5, 5 steps
an epoch, one pass through the data, validation on the first 100 frames (omission 1).

Within the budget: a Keras callback stops training at the batch that ends nearest the budget
(the mean step time so far predicts it); the model is then saved by the trainer's
``finalize``. DeepInterpolation predicts only frames with 30 frames on each side, so for the
inference the movie is mirrored by 30 frames at both ends (plus up to 4 frames at the end so
that the batches of 5 cover every frame), and the result is cropped back to the movie.

Usage (DeepInterpolation's venv)::

    .venvs/deepinterpolation/bin/python run_deepinterpolation.py --movie raw.tif \
        --out den.tif --budget 180 --json result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np
import tifffile
from rss import peak_rss_mb  # beside this script


def save_json(obj: dict, path: Path) -> str:
    path.write_text(json.dumps(obj, indent=2))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movie", type=Path, required=True, help="(T, Y, X) tif")
    parser.add_argument("--out", type=Path, required=True, help="denoised float32 tif")
    parser.add_argument("--budget", type=float, required=True, help="training seconds")
    parser.add_argument("--json", type=Path, required=True, help="timings and settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pre-post-frame", type=int, default=30, help="example: 30")
    parser.add_argument("--batch-size", type=int, default=5, help="example: 5")
    parser.add_argument("--steps-per-epoch", type=int, default=5, help="example: 5")
    parser.add_argument("--passes", type=int, default=1, help="nb_times_through_data: 1")
    parser.add_argument("--workdir", type=Path, default=None, help="kept if given")
    args = parser.parse_args()

    import tensorflow as tf
    from deepinterpolation.generic import ClassLoader

    random.seed(args.seed)
    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)
    if os.environ.get("OMP_NUM_THREADS"):  # peers.py --threads: TensorFlow does not read it
        n = int(os.environ["OMP_NUM_THREADS"])
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)

    work = Path(tempfile.mkdtemp(prefix="deepinterp_")) if args.workdir is None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    movie = tifffile.imread(str(args.movie)).astype(np.float32)
    t_len = movie.shape[0]
    ppf = args.pre_post_frame
    if t_len < 2 * ppf + 2 * args.batch_size + 2:
        raise SystemExit(f"movie too short for DeepInterpolation: {t_len} frames")
    # Its U-Net halves the frame four times and concatenates the skips, so a side that is not
    # a multiple of 16 fails (100 -> 25 -> 12 -> 24 != 25): pad by reflection, crop back.
    y_len, x_len = movie.shape[1:]
    sides = ((0, 0), (0, (-y_len) % 16), (0, (-x_len) % 16))
    framed = np.pad(movie, sides, mode="reflect") if any(sum(p) for p in sides) else movie
    train_tif = work / "train.tif"
    tifffile.imwrite(str(train_tif), framed)

    generator = {
        "type": "generator",
        "name": "SingleTifGenerator",
        "pre_post_frame": ppf,
        "train_path": str(train_tif),
        "batch_size": args.batch_size,
        "start_frame": 0,
        "end_frame": -1,
        "pre_post_omission": 0,
        "steps_per_epoch": args.steps_per_epoch,
    }
    test_generator = dict(generator)
    test_generator.update(
        {"end_frame": min(99, t_len - 1), "pre_post_omission": 1, "steps_per_epoch": -1}
    )
    network = {"type": "network", "name": "unet_single_1024"}
    training = {
        "type": "trainer",
        "name": "core_trainer",
        "run_uid": "peer",
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps_per_epoch,
        "period_save": 25,
        "nb_gpus": 0,
        "apply_learning_decay": 0,
        "nb_times_through_data": args.passes,
        "learning_rate": 0.0001,
        "pre_post_frame": ppf,
        "loss": "mean_absolute_error",
        "nb_workers": 1,
        "use_multiprocessing": False,
        "model_string": "unet_single_1024_mean_absolute_error",
        "output_dir": str(work),
    }
    paths = {
        name: save_json(obj, work / (name + ".json"))
        for name, obj in (
            ("generator", generator),
            ("test_generator", test_generator),
            ("network", network),
            ("training", training),
        )
    }

    class Budget(tf.keras.callbacks.Callback):
        """Stop at the batch whose end is nearest the deadline."""

        def __init__(self, deadline: float) -> None:
            super().__init__()
            self.deadline = deadline
            self.start = None
            self.steps = 0

        def on_train_batch_begin(self, batch, logs=None):
            if self.start is None:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            now = time.perf_counter()
            step = (now - self.start) / self.steps
            if now + step / 2 > self.deadline:
                self.model.stop_training = True

    t0 = time.perf_counter()
    budget = Budget(t0 + args.budget)
    train_gen = ClassLoader(paths["generator"]).find_and_build()(paths["generator"])
    test_gen = ClassLoader(paths["test_generator"]).find_and_build()(paths["test_generator"])
    net = ClassLoader(paths["network"]).find_and_build()(paths["network"])
    trainer = ClassLoader(paths["training"]).find_and_build()(
        train_gen, test_gen, net, paths["training"]
    )
    trainer.callbacks_list.append(budget)
    trainer.run()
    trainer.finalize()
    train_s = time.perf_counter() - t0
    rss_train = peak_rss_mb()

    # Inference on the movie mirrored at both ends, so that every frame is predicted.
    extra = (-t_len) % args.batch_size
    padded = np.pad(framed, ((ppf, ppf + extra), (0, 0), (0, 0)), mode="reflect")
    infer_tif = work / "infer.tif"
    tifffile.imwrite(str(infer_tif), padded)
    infer_generator = dict(generator)
    infer_generator.update({"train_path": str(infer_tif), "randomize": 0, "steps_per_epoch": -1})
    out_h5 = work / "denoised.h5"
    inference = {
        "type": "inferrence",
        "name": "core_inferrence",
        "model_source": {"local_path": trainer.output_model_file_path},
        "output_file": str(out_h5),
        "save_raw": False,
        "rescale": True,
    }
    p_gen = save_json(infer_generator, work / "infer_generator.json")
    p_inf = save_json(inference, work / "inference.json")
    t1 = time.perf_counter()
    gen = ClassLoader(p_gen).find_and_build()(p_gen)
    inferrer = ClassLoader(p_inf).find_and_build()(p_inf, gen)
    inferrer.run()
    with h5py.File(str(out_h5), "r") as f:
        denoised = np.asarray(f["data"][:t_len, :y_len, :x_len], dtype=np.float32)
    infer_s = time.perf_counter() - t1
    if denoised.shape != movie.shape:
        raise SystemExit(f"DeepInterpolation returned {denoised.shape}, expected {movie.shape}")
    tifffile.imwrite(str(args.out), denoised)

    import deepinterpolation  # noqa: F401

    versions = {"python": platform.python_version(), "tensorflow": tf.__version__}
    try:
        from importlib.metadata import version

        versions["deepinterpolation"] = version("deepinterpolation")
    except Exception:  # noqa: BLE001
        versions["deepinterpolation"] = "unknown"
    result = {
        "method": "DeepInterpolation",
        "train_s": train_s,
        "infer_s": infer_s,
        "infer_fps": t_len / infer_s,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_train_mb": rss_train,
        "steps": budget.steps,
        "settings": {
            "generator": generator,
            "network": network,
            "training": {k: v for k, v in training.items() if k != "output_dir"},
            "inference_mirror_frames": [ppf, ppf + extra],
        },
        "threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
        "versions": versions,
    }
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("train_s", "infer_fps", "steps")}), file=sys.stderr)
    if args.workdir is None:
        shutil.rmtree(str(work), ignore_errors=True)


if __name__ == "__main__":
    main()
