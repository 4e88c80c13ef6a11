"""Command line: parse options, build a Config, call the API, show progress, write files.

Errors a user can cause print one line (``error: <file>: <problem>; <fix>``) and exit with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from tqdm.auto import tqdm

from calmdown import __version__
from calmdown.allocator import limit_arenas
from calmdown.checkpoint import Checkpoint, Interrupted, defer_interrupts, handle_signals
from calmdown.config import Config, chunk_options, make_config
from calmdown.device import resolve_device, training_dtype
from calmdown.errors import CalmdownError, InputError
from calmdown.io import (
    MovieReader,
    MovieWriter,
    count_planes,
    open_movie,
    output_dtype,
    output_paths_like,
    round_for_output,
    same_file,
    write_atomic,
)
from calmdown.io.padding import (
    Crop,
    CroppedReader,
    Region,
    blank_mask,
    crop_of,
    frame_runs,
    frame_shape,
    region_of,
)
from calmdown.neighbours import neighbour_numbers
from calmdown.noise import NoiseModel
from calmdown.persist import load_model, save_model
from calmdown.pipeline import Prepared, TrainedModel, adopt_network, iter_apply, prepare, train
from calmdown.train import TrainProgress

app = typer.Typer(
    name="calmdown",
    help="Denoise calcium-imaging movies, self-supervised, with calibrated uncertainty.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

logger = logging.getLogger("calmdown")

# -- shared options --------------------------------------------------------------------------

Key = Annotated[str | None, typer.Option("--key", help="Dataset inside an HDF5 or Zarr file.")]
Channel = Annotated[
    int | None,
    typer.Option("--channel", help="Channel to read (ScanImage number; else from 1)."),
]
Roi = Annotated[
    int | None,
    typer.Option("--roi", help="Region of a ScanImage multi-ROI recording to read, from 1."),
]
EVALUATE_PIXELS = 1 << 25
"""Pixels (frames x rows x columns) that ``evaluate`` reads by default: its photon split, the
denoiser's input and output and their scores take about 100 bytes per pixel (2.7 GB for 400
frames of 256 x 256), so a whole 512 x 512 x 10000 movie would need some 260 GB."""

CropOption = Annotated[
    str | None,
    typer.Option(
        "--crop",
        help="Rows and columns to read, Y0:Y1,X0:X1 (e.g. 4:508,4:508), frames too as "
        "T0:T1,Y0:Y1,X0:X1, or auto: what was measured throughout (cuts the padding motion "
        "correction leaves at the edges, and blank frames at the start and end). The outputs "
        "have the crop's size.",
    ),
]


def _plane_option(value: str) -> str:
    """Check a --plane value: a plane number (from 1) or ``all``; return it as text."""
    text = str(value).strip().lower()
    if text == "all" or text.isdigit():
        return text
    raise typer.BadParameter(
        f"{value!r} is not a plane: pass a plane number counted from 1 (e.g. --plane 2), or "
        "--plane all (calmdown denoise only: every plane with its own model)"
    )


def _plane_number(plane: str | None) -> int | None:
    """Return the plane of a one-plane command (train, apply); refuse ``all`` clearly."""
    if plane is None:
        return None
    if plane == "all":
        raise InputError(
            "--plane all works with calmdown denoise only (it trains one model per plane); "
            "pass one plane here, e.g. --plane 1"
        )
    return int(plane)


Plane = Annotated[
    str | None,
    typer.Option(
        "--plane",
        parser=_plane_option,
        metavar="N|all",
        help="Plane to read, from 1; `denoise --plane all` denoises every plane, each with its "
        "own model, into OUT.plane1, OUT.plane2, ...",
    ),
]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Threads = Annotated[int | None, typer.Option("--threads", help="CPU threads for PyTorch.")]
RuntimeOption = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        help="What runs the network on a CPU: auto (ONNX Runtime when installed), "
        "onnxruntime (pip install 'calmdown[onnx]') or torch.",
    ),
]
PrecisionOption = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="Arithmetic of the training steps: auto (bfloat16 where the CPU or GPU has it "
        "natively: 1.35-1.4x the steps in the same time on an AVX512-BF16 CPU; else float32), "
        "float32 or bfloat16.",
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed of every random choice. The same seed, input, options and machine give "
        "identical output when training stops on --max-steps or early stopping (not on "
        "--time-budget).",
    ),
]
Budget = Annotated[
    float,
    typer.Option(
        "--time-budget",
        help="Training wall-clock budget in seconds. How many steps fit depends on the "
        "machine's load, so runs that stop on it are not reproducible; fix --max-steps "
        "for that.",
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue training from the checkpoint (OUT.checkpoint.pt) of an interrupted "
        "run: the remaining steps and time budget carry on. Same movie and training options "
        "only.",
    ),
]
CheckpointEvery = Annotated[
    float,
    typer.Option(
        "--checkpoint-every",
        min=0.0,
        help="Seconds of training between checkpoints (one is also written on interrupt).",
    ),
]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="Most training steps.")]
Init = Annotated[
    Path | None,
    typer.Option(
        "--init",
        help="Fine-tune: start from the network of this model file (from `calmdown train` or "
        "--model-out, e.g. an earlier session of the same preparation) instead of random "
        "weights. Its network settings are taken over; the noise model, mean image and "
        "calibration are fitted on RAW afresh.",
    ),
]
Context = Annotated[
    int | None, typer.Option("--context-frames", help="K: frames on each side as context.")
]
NoMean = Annotated[
    bool, typer.Option("--no-mean-image", help="Do not feed the time-averaged image.")
]
Width = Annotated[
    int | None,
    typer.Option(
        "--width",
        min=4,
        max=256,
        help="Channels of the network's finest level (default 32). 16 runs inference ~1.3x "
        "faster at 512 x 512 and makes ~1.7x the training steps in the same time; it scored "
        "the same on a real recording, 0.1 dB lower on a simulated one, with intervals less "
        "well calibrated there (README, Benchmarks).",
    ),
]
PlaneContext = Annotated[
    bool,
    typer.Option(
        "--plane-context",
        help="Also feed the planes above and below at the same frame (a volume recording; "
        "needs --plane). The model then needs them when applied.",
    ),
]
Gain = Annotated[float | None, typer.Option("--gain", help="ADU per photon (else estimated).")]
Offset = Annotated[float | None, typer.Option("--offset", help="Zero-light ADU (else estimated).")]
ReadNoise = Annotated[
    float | None, typer.Option("--read-noise", help="Read noise sd in ADU (else estimated).")
]
Output = Annotated[
    str,
    typer.Option("--output", help="posterior (denoised) or prior (context-only prediction)."),
]
Interval = Annotated[
    float | None,
    typer.Option("--interval", help="Also write OUT.lower/OUT.upper: central credible interval."),
]
Samples = Annotated[
    int,
    typer.Option(
        "--samples",
        help="Also write N joint Monte-Carlo samples of the clean movie: OUT.sample1 ... "
        "(errors correlated across pixels and frames as the model's).",
    ),
]
DType = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Stored type of the denoised movie, intervals and samples: float32 (default), "
        "input (the raw movie's integer type: half the size of float32 for 16-bit data; values "
        "rounded to whole ADU, interval ends outward), uint16 or int16.",
    ),
]
Chunk = Annotated[
    int | None,
    typer.Option(
        "--chunk-frames",
        help="Frames processed at once (default: 128, fewer for large frames: 16 at 512 x 512). "
        "More is faster and takes more memory: at 512 x 512, 64 ran 1.45x faster and peaked "
        "0.9 GB higher.",
    ),
]
DaskFlag = Annotated[
    bool, typer.Option("--dask", help="Denoise on a Dask cluster, in parallel (OUT must be .zarr).")
]
DaskWorkers = Annotated[
    int | None,
    typer.Option("--dask-workers", help="Workers of the local Dask cluster (implies --dask)."),
]
DaskScheduler = Annotated[
    str | None,
    typer.Option(
        "--dask-scheduler", help="Running Dask scheduler, e.g. tcp://host:8786 (implies --dask)."
    ),
]


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Print a warning as one line, without the source line it came from."""
    typer.echo(f"warning: {message}", err=True)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if verbose == 0 and not quiet:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def _errors(debug: bool, checkpoint: Path | list[Path] | None = None) -> Iterator[None]:
    """Turn errors into one line and an exit status; tracebacks only with --debug.

    Warnings print as one line too, for the duration of the command only. SIGTERM is
    handled like Ctrl-C (SIGINT): files being written are removed (their ``*.partial``), the
    training checkpoint (``checkpoint``, when the command trains) is kept, one line says so,
    and the exit status is 130. ``checkpoint`` may be a list (one per plane, filled in as the
    command goes); the hint names the first that exists.
    """
    try:
        with warnings.catch_warnings(), handle_signals():
            warnings.showwarning = _show_warning
            yield
    except KeyboardInterrupt as err:
        name = err.signal_name if isinstance(err, Interrupted) else "SIGINT"
        hint = ""
        paths = [checkpoint] if isinstance(checkpoint, Path) else list(checkpoint or [])
        found = next((path for path in paths if path.is_file()), None)
        if found is not None:
            hint = f"; rerun with --resume to continue training from the last checkpoint ({found})"
        typer.echo(
            f"interrupted ({name}); no output was left half-written (unfinished files are "
            f"removed){hint}",
            err=True,
        )
        raise typer.Exit(130) from None
    except CalmdownError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except Exception as err:
        if debug:
            raise
        typer.echo(
            f"error: unexpected {type(err).__name__}: {err}. Rerun with --debug for the "
            "traceback and report it.",
            err=True,
        )
        raise typer.Exit(1) from None


def _config(**flat: Any) -> Config:
    cfg = make_config(Config(), **flat)
    # Emulated bfloat16 asked for: refused before RAW is read (the first pass comes first).
    training_dtype(resolve_device(cfg.device), cfg.train.precision)
    return cfg


def _adopt_init(
    cfg: Config,
    init: Path | None,
    context_frames: int | None,
    width: int | None,
    no_mean_image: bool,
    plane_context: bool,
) -> tuple[Config, TrainedModel | None]:
    """Return the settings with the network of the --init model (before RAW is read), and it."""
    if init is None:
        return cfg, None
    start = load_model(init)
    explicit = {
        "context_frames": context_frames,
        "width": width,
        "use_mean_image": False if no_mean_image else None,
        "plane_context": True if plane_context else None,
    }
    return adopt_network(cfg, start, explicit=explicit), start


def _train_progress(quiet: bool, cfg: Config) -> tuple[Callable[[TrainProgress], None], Any]:
    budget = cfg.train.time_budget_s
    bar = tqdm(
        total=cfg.train.max_steps,
        desc="training",
        unit="step",
        disable=quiet,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def update(info: TrainProgress) -> None:
        if info.phase == "calibrating":
            bar.total = bar.n  # the loop is over: no estimate of steps to come
            bar.set_description("training done; calibrating on held-out frames")
            bar.refresh()
            return
        bar.update(info.step - bar.n)
        extra = f"/{budget:.0f}s" if budget else "s"
        bar.set_postfix_str(
            f"held-out {info.val_loss:.4f} (best {info.best_val_loss:.4f}), "
            f"{info.seconds:.0f}{extra}"
        )

    return update, bar


def _beside(out: Path, suffix: str) -> Path:
    """Name a file next to the output movie: its name without the movie extension + suffix."""
    base = out.name
    for ext in (".ome.zarr", ".zarr", ".tiff", ".tif", ".btf", ".hdf5", ".h5", ".npy", ".nwb"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return out.with_name(base + suffix)


def _model_path(out: Path) -> Path:
    return _beside(out, ".model.pt")


def _sidecar_path(out: Path) -> Path:
    return _beside(out, ".calmdown.json")


def _checkpoint_path(out: Path) -> Path:
    """Training checkpoint beside OUT: ``out.tif`` and ``out.pt`` give ``out.checkpoint.pt``."""
    path = _beside(out, ".checkpoint.pt")
    if out.suffix.lower() == ".pt":
        path = out.with_name(out.name[: -len(out.suffix)] + ".checkpoint.pt")
    return path


def _prepare_raw(
    raw: str | Path | np.ndarray,
    cfg: Config,
    *,
    key: str | None,
    channel: int | None,
    plane: int | None,
    roi: int | None = None,
    crop: Crop | Region | str | None = None,
) -> Prepared:
    """Open RAW (its channel, plane and ROI) and run the first pass; the result owns the reader.

    For a model with plane context, the neighbouring planes are opened too (and owned).
    """
    neighbours: list[MovieReader] = []
    readers: list[MovieReader] = []
    try:
        n_planes = None
        if cfg.model.plane_context:
            n_planes = count_planes(raw, key=key) if isinstance(raw, (str, Path)) else None
            if plane is None or n_planes is None:
                raise InputError(
                    "--plane-context feeds the planes above and below the plane denoised: it "
                    "needs a volume recording and --plane N (or denoise --plane all)",
                    path=raw if isinstance(raw, (str, Path)) else None,
                )
        reader = open_movie(raw, key=key, channel=channel, plane=plane, roi=roi, crop=crop)
        readers.append(reader)
        if plane is not None and n_planes is not None:
            opened: dict[int, MovieReader] = {}
            for number in neighbour_numbers(plane, n_planes):
                if number not in opened:
                    opened[number] = open_movie(
                        raw,
                        key=key,
                        channel=channel,
                        plane=number,
                        roi=roi,
                        crop=region_of(reader),  # the plane's own crop, also when found
                    )
                    readers.append(opened[number])
                neighbours.append(opened[number])
        prep = prepare(reader, cfg, neighbours=neighbours or None)
    except BaseException:
        for opened_reader in readers:
            opened_reader.close()
        raise
    prep.owns_reader = True
    if prep.planes is not None:
        prep.planes.owned = [r for r in readers if r is not reader]
    return prep


def _write_movies(
    model: TrainedModel,
    raw: str | Path | np.ndarray,
    out: Path,
    *,
    key: str | None,
    interval: float | None,
    prepared: Prepared | None,
    quiet: bool,
    cfg: Config,
    inputs: list[str],
    channel: int | None = None,
    plane: int | None = None,
    roi: int | None = None,
    crop: Crop | Region | str | None = None,
    samples: int = 0,
    dtype: str = "float32",
) -> tuple[float, int, np.dtype]:
    """Stream the denoised movie (intervals, samples) to files.

    Returns the seconds taken, the frames written and the type stored (``dtype`` resolved,
    see :func:`calmdown.io.output_dtype`).
    """
    _check_samples(samples, cfg)
    output_dtype(dtype, "float32")  # a bad choice, before the movie is opened
    prep = prepared or _prepare_raw(
        raw, cfg, key=key, channel=channel, plane=plane, roi=roi, crop=crop
    )
    stored = output_dtype(dtype, prep.reader.dtype)
    shape = prep.shape  # blank frames included: iter_apply passes them through
    targets = {"denoised": out}
    if interval is not None:
        lower, upper = output_paths_like(out, ["lower", "upper"])
        targets.update(lower=lower, upper=upper)
    names = [f"sample{j + 1}" for j in range(samples)]
    if samples:
        targets.update(zip(names, output_paths_like(out, names), strict=True))
    t0 = time.perf_counter()
    with ExitStack() as stack:
        if prepared is None:
            stack.callback(prep.close)
        writers = {
            name: stack.enter_context(
                MovieWriter(path, shape, dtype=stored, inputs=inputs, key=key or "data")
            )
            for name, path in targets.items()
        }
        bar = stack.enter_context(
            tqdm(total=shape[0], desc="denoising", unit="frame", disable=quiet, file=sys.stderr)
        )
        for chunk in iter_apply(
            model,
            prep.reader,
            prepared=prep,
            interval=interval,
            config=cfg,
            samples=samples,
        ):
            for name, writer in writers.items():
                writer.write(chunk.start, round_for_output(name, chunk.output(name), stored))
            bar.update(chunk.stop - chunk.start)
            del chunk  # not held while the next one is computed
    return time.perf_counter() - t0, shape[0], stored


def _check_samples(samples: int, cfg: Config) -> None:
    if samples < 0:
        raise InputError(f"--samples must be 0 or more, got {samples}")
    if samples and cfg.inference.output == "prior":
        raise InputError(
            "--samples draws from the posterior, but --output prior asks for the context "
            "network's prediction alone; leave one of them out"
        )


def _movie_writer(
    out: Path,
    raw: Path,
    *,
    dask: bool,
    workers: int | None,
    scheduler: str | None,
    channel: int | None,
    plane: int | None,
    roi: int | None = None,
    crop: Crop | Region | str | None = None,
) -> Callable[..., tuple[float, int]]:
    """Pick how the movies are written: here, or on Dask (its options checked before work)."""
    if not dask and workers is None and scheduler is None:
        return _write_movies
    from calmdown.distributed import check_dask_output, require_distributed

    if workers is not None and scheduler is not None:
        raise InputError(
            "--dask-workers sizes a local cluster, but --dask-scheduler uses a running one "
            "with its own workers; leave one of them out"
        )
    require_distributed()
    check_dask_output(out, raw)

    def write(*args: Any, **kwargs: Any) -> tuple[float, int]:
        kwargs = {"channel": channel, "plane": plane, "roi": roi, "crop": crop, **kwargs}
        return _write_movies_dask(*args, workers=workers, scheduler=scheduler, **kwargs)

    return write


def _write_movies_dask(
    model: TrainedModel,
    raw: Path,
    out: Path,
    *,
    key: str | None,
    interval: float | None,
    prepared: Prepared | None,
    quiet: bool,
    cfg: Config,
    inputs: list[str],
    channel: int | None = None,
    plane: int | None = None,
    roi: int | None = None,
    crop: Crop | Region | str | None = None,
    samples: int = 0,
    dtype: str = "float32",
    workers: int | None = None,
    scheduler: str | None = None,
) -> tuple[float, int, np.dtype]:
    """Denoise on a Dask cluster into Zarr stores, as :func:`_write_movies` (start included)."""
    from calmdown.distributed import dask_apply

    _check_samples(samples, cfg)
    output_dtype(dtype, "float32")  # a bad choice, before the movie is opened
    prep = prepared or _prepare_raw(
        raw, cfg, key=key, channel=channel, plane=plane, roi=roi, crop=crop
    )
    stored = output_dtype(dtype, prep.reader.dtype)
    with ExitStack() as stack:
        if prepared is None:
            stack.callback(prep.close)
        bar = stack.enter_context(
            tqdm(
                total=prep.shape[0],
                desc="denoising (dask)",
                unit="frame",
                disable=quiet,
                file=sys.stderr,
            )
        )
        result = dask_apply(
            model,
            raw,
            out,
            key=key,
            channel=channel,
            plane=plane,
            roi=roi,
            crop=region_of(prep.reader),  # found once, here, not by every task
            interval=interval,
            samples=samples,
            scheduler=scheduler,
            workers=workers,
            prepared=prep,
            config=cfg,
            dtype=stored,
            progress=lambda done: bar.update(done.stop - done.start),
        )
    logger.info(
        "Dask: %d tasks on %d workers; %.1f s to start, %.1f s to denoise",
        result.n_tasks,
        len(result.workers),
        result.startup_seconds,
        result.seconds,
    )
    return result.startup_seconds + result.seconds, result.n_frames, stored


def _summary(
    model: TrainedModel,
    *,
    out: Path | None,
    model_path: Path | None,
    infer_seconds: float | None,
    n_frames: int | None,
    shape: tuple[int, ...] | None,
    recording: dict[str, Any] | None = None,
    interval: float | None = None,
    samples: int = 0,
    dtype: np.dtype | None = None,
) -> str:
    n = model.noise
    t = model.training
    h = model.heldout
    parts = [
        f"Noise model ({n.source}): gain {n.gain:.3g} ADU/photon, offset {n.offset:.4g} ADU, "
        f"read noise {n.read_noise:.3g} ADU; {n.photons_per_pixel:.3g} photons per pixel per "
        f"frame (median); neighbour noise correlation y {n.neighbour_correlation[0]:.2f}, "
        f"x {n.neighbour_correlation[1]:.2f}"
        + (
            f" (per-pixel variance {n.variance_ratio:.2f} of the photon count's: the movie "
            "looks interpolated, e.g. motion-corrected)"
            if n.variance_ratio < 0.95
            else ""
        )
        + ".",
        f"Training: {t['steps']} steps in {t.get('loop_seconds', t['seconds']):.1f} s"
        + (
            f" and {t['seconds'] - t['loop_seconds']:.1f} s calibrating on held-out frames"
            if "loop_seconds" in t
            else ""
        )
        + f" on {t['device']}"
        f"{' in ' + t['precision'] if 'precision' in t else ''}"
        f"{' (inference: ' + t['runtime'] + ')' if 'runtime' in t else ''} "
        f"(stopped: {t['stopped_because'].replace('_', ' ')}), held-out loss "
        f"{t['best_val_loss']:.4f}"
        + (
            f"; fine-tuned from {t['init']} (held-out loss {t['start_val_loss']:.4f} at the start)"
            if t.get("init")
            else ""
        )
        + (
            f"; it diverged {t['recoveries']} time(s) and went back to its best weights at "
            "half the learning rate"
            if t.get("recoveries")
            else ""
        )
        + ".",
        f"Calibration on held-out frames: {100 * h['coverage']:.1f} % of raw values inside their "
        f"predicted {100 * h['level']:.0f} % intervals, PIT KS distance {h['pit_ks']:.3f}."
        + _resolution(h),
    ]
    said = _recording(recording or {})
    if said:
        parts.insert(0, said)
    if infer_seconds is not None and n_frames:
        parts.append(
            f"Inference: {n_frames} frames of {shape[1]} x {shape[2]} in {infer_seconds:.1f} s "  # type: ignore[index]
            f"({n_frames / max(infer_seconds, 1e-9):.1f} frames/s)."
        )
    if out is not None:
        parts.append(_outputs_written(out, interval, samples, dtype, n))
    if model_path is not None:
        parts.append(f"Model saved to {model_path}.")
    return " ".join(parts)


_ROUNDING_NOISE_ADU = 50.0
"""Below this noise sd (ADU, at the median brightness), whole-ADU outputs are flagged: the
denoised values' error is 5-15 % of the noise sd (calibration.txt, interval / raw noise width),
and rounding (0.29 ADU rms) then adds more than ~1 % to its variance."""


def _outputs_written(
    out: Path,
    interval: float | None,
    samples: int,
    dtype: np.dtype | None = None,
    noise: NoiseModel | None = None,
) -> str:
    """Return the sentence naming the movies ``write_movies`` wrote for ``out``.

    With an integer ``dtype`` and a ``noise`` model whose noise is a few ADU, it says that
    rounding to whole ADU is not negligible there.
    """
    stored = np.dtype(dtype or "float32")
    kind = (
        f"{stored}, rounded to whole ADU" + (", interval ends outward" if interval else "")
        if stored.kind in "iu"
        else str(stored)
    )
    text = f"Denoised movie ({kind}): {out}"
    if interval is not None:
        lower, upper = output_paths_like(out, ["lower", "upper"])
        text += f"; central {100 * interval:g} % credible interval: {lower}, {upper}"
    if samples:
        first, last = output_paths_like(out, ["sample1", f"sample{samples}"])
        names = str(first) if samples == 1 else f"{first} ... {last.name}"
        text += f"; {samples} joint sample{'s' if samples > 1 else ''}: {names}"
    text += "."
    if stored.kind in "iu" and noise is not None:
        sd = math.sqrt(
            noise.variance_ratio * (noise.gain**2 * noise.photons_per_pixel + noise.read_noise**2)
        )
        if sd < _ROUNDING_NOISE_ADU:
            text += (
                f" The noise is {sd:.3g} ADU per pixel here, so rounding to whole ADU (0.29 ADU "
                "rms) is not small beside the denoised values' error (typically 5-15 % of the "
                "noise); --dtype float32 keeps them exact."
            )
    return text


def _resolution(heldout: dict[str, Any]) -> str:
    """How well the held-out frames could check the widths (absent from older model files)."""
    if "scale_se" not in heldout:
        return ""
    rows = heldout["row_scale_se"]
    return (
        f" The prior's stated error is {100 * heldout['prior_error_share']:.2g} % of the noise "
        f"variance there, so they measure the scale of the interval widths to "
        f"+-{_pct(heldout['scale_se'])} % overall and +-{_pct(min(rows))}-"
        f"{_pct(max(rows))} % by brightness (a group measured worse than +-25 % leans on "
        "the overall scale and the network's own spread)."
    )


def _pct(fraction: float) -> str:
    """Format a fraction in percent: whole numbers from 10 %, two significant digits below."""
    pct = 100 * fraction
    return f"{pct:.0f}" if pct >= 10 else f"{pct:.2g}"


def _recording(meta: dict[str, Any]) -> str:
    """Say what the file tells of the recording: frame rate, zoom, channel, plane, ROI read."""
    bits = []
    rate = meta.get("frame_rate")
    if isinstance(rate, (int, float)) and rate > 0:
        bits.append(f"{rate:.3g} frames/s")
    if isinstance(meta.get("zoom"), (int, float)):
        bits.append(f"zoom {meta['zoom']:g}")
    if meta.get("channel") is not None:
        bits.append(f"channel {meta['channel']}")
    if meta.get("plane") is not None:
        of = f" of {meta['planes']}" if meta.get("planes") else ""
        bits.append(f"plane {meta['plane']}{of}")
    if meta.get("roi") is not None:
        named = meta.get("roi_name") not in (None, "", f"ROI {meta['roi']}")
        name = f" ({meta['roi_name']})" if named else ""
        of = f" of {meta['rois']}" if meta.get("rois") else ""
        bits.append(f"ROI {meta['roi']}{name}{of}")
    if meta.get("frames_read") is not None:
        bits.append("frames {}:{}".format(*meta["frames_read"]))
    if meta.get("crop") is not None:
        (y0, y1), (x0, x1) = meta["crop"]
        bits.append(f"rows {y0}:{y1} and columns {x0}:{x1} read")
    blank = meta.get("blank_frames")
    if blank:
        bits.append(
            f"{len(blank)} blank frame{'s' if len(blank) > 1 else ''} ({frame_runs(blank)}: one "
            "value in every pixel) left out of the noise model, training and denoising, and "
            "passed through to the outputs as they are"
        )
    return f"Recording: {', '.join(bits)}." if bits else ""


def _write_sidecar(path: Path, model: TrainedModel, extra: dict[str, Any]) -> None:
    data = {
        "calmdown_version": __version__,
        "config": model.config.model_dump(mode="json"),
        "noise_model": model.noise.to_dict(),
        "training": model.training,
        "heldout_check": model.heldout,
        **extra,
    }
    write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, default=str)), "sidecar")


# -- commands ---------------------------------------------------------------------------------


@app.command()
def denoise(
    raw: Annotated[
        Path,
        typer.Argument(
            help="Raw movie: TIFF, HDF5, Zarr, NWB or .npy (T, Y, X); or a recording split over "
            "numbered files (name_00001.tif, ...): their folder, or a quoted pattern such as "
            "'rec/name_*.tif', read in number order."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output movie (.tif, .h5, .zarr).")],
    key: Key = None,
    channel: Channel = None,
    plane: Plane = None,
    roi: Roi = None,
    crop: CropOption = None,
    model_out: Annotated[
        Path | None, typer.Option("--model-out", help="Where to save the model.")
    ] = None,
    output: Output = "posterior",
    interval: Interval = None,
    samples: Samples = 0,
    dtype: DType = "float32",
    time_budget: Budget = 180.0,
    max_steps: MaxSteps = None,
    init: Init = None,
    context_frames: Context = None,
    width: Width = None,
    no_mean_image: NoMean = False,
    plane_context: PlaneContext = False,
    gain: Gain = None,
    offset: Offset = None,
    read_noise: ReadNoise = None,
    chunk_frames: Chunk = None,
    dask: DaskFlag = False,
    dask_workers: DaskWorkers = None,
    dask_scheduler: DaskScheduler = None,
    device: Device = "auto",
    threads: Threads = None,
    runtime: RuntimeOption = None,
    precision: PrecisionOption = None,
    seed: Seed = 0,
    resume: Resume = False,
    checkpoint_every: CheckpointEvery = 30.0,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train on RAW itself and write the denoised movie to OUT (same shape; float32, or --dtype).

    While training, a checkpoint OUT.checkpoint.pt is kept (every ~30 s and on interrupt);
    it is removed once every output is written. Ctrl-C or SIGTERM leaves nothing under the
    output names but complete files (the model when training had finished).

    With --plane all, every plane is denoised in turn with its own noise model and network,
    into OUT.plane1, OUT.plane2, ... (each with its model, sidecar and checkpoint named after
    it); planes finished before an interrupt are kept, and --resume skips them.
    """
    _setup_logging(verbose, quiet)
    ckpt = Checkpoint(
        _checkpoint_path(out), resume=resume, every_s=checkpoint_every, remove_when_done=False
    )
    ckpt_paths = [ckpt.path]  # one per plane with --plane all
    with _errors(debug, checkpoint=ckpt_paths):
        cfg = _config(
            output=output,
            time_budget_s=time_budget,
            max_steps=max_steps,
            context_frames=context_frames,
            width=width,
            use_mean_image=False if no_mean_image else None,
            plane_context=True if plane_context else None,
            gain=gain,
            offset=offset,
            read_noise=read_noise,
            chunk_frames=chunk_frames,
            **chunk_options(chunk_frames),
            device=device,
            threads=threads,
            runtime=runtime,
            precision=precision,
            seed=seed,
        )
        cfg, start = _adopt_init(cfg, init, context_frames, width, no_mean_image, plane_context)
        _check_output(out, raw)
        _check_samples(samples, cfg)  # before training, not after it
        output_dtype(dtype, "float32")  # a bad choice refused before training
        if dask and plane_context:  # before training, not after it
            raise InputError(
                "--plane-context does not run on Dask yet (each task would have to read the "
                "neighbouring planes too); leave out --dask or --plane-context"
            )
        write_movies = _movie_writer(
            out,
            raw,
            dask=dask,
            workers=dask_workers,
            scheduler=dask_scheduler,
            channel=channel,
            plane=None if plane == "all" else _plane_number(plane),
            roi=roi,
            crop=crop,
        )
        options: dict[str, Any] = {
            "key": key,
            "channel": channel,
            "roi": roi,
            "crop": crop,
            "cfg": cfg,
            "write_movies": write_movies,
            "interval": interval,
            "samples": samples,
            "dtype": dtype,
            "quiet": quiet,
            "init": start,
        }
        if plane == "all":
            _denoise_planes(
                raw,
                out,
                model_out=model_out,
                resume=resume,
                checkpoint_every=checkpoint_every,
                checkpoints=ckpt_paths,
                **options,
            )
            return
        summary, _ = _denoise_one(
            raw, out, plane=_plane_number(plane), model_out=model_out, ckpt=ckpt, **options
        )
        if not quiet:
            typer.echo(summary)


def _denoise_one(
    raw: Path,
    out: Path,
    *,
    key: str | None,
    channel: int | None,
    plane: int | None,
    model_out: Path | None,
    ckpt: Checkpoint,
    roi: int | None = None,
    crop: Crop | Region | str | None = None,
    cfg: Config,
    write_movies: Callable[..., tuple[float, int]],
    interval: float | None,
    samples: int,
    quiet: bool,
    dtype: str = "float32",
    init: TrainedModel | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[str, TrainedModel]:
    """Denoise one movie (one plane of RAW): train, save the model, write OUT and the sidecar.

    Returns the summary paragraph and the model. Every file is written atomically, so an
    interrupt leaves the outputs complete or absent (and the checkpoint, to resume from).
    """
    prep = _prepare_raw(raw, cfg, key=key, channel=channel, plane=plane, roi=roi, crop=crop)
    with closing(prep):
        listed = prep.reader.metadata.get("files")  # the parts of a multi-file recording
        files = [str(f) for f in listed] if isinstance(listed, list) else []
        for part in files:  # refused before training, not after it
            if same_file(out, Path(part)):
                raise InputError(
                    f"the output path is one of the input files ({part}); it would be "
                    "overwritten: choose another -o",
                    path=out,
                )
        update, bar = _train_progress(quiet, cfg)
        with bar:
            model = train(
                raw, config=cfg, prepared=prep, progress=update, checkpoint=ckpt, init=init
            )
        with defer_interrupts():  # complete or absent, even on a signal
            model_path = save_model(model, model_out or _model_path(out))
        seconds, n_frames, stored = write_movies(
            model,
            raw,
            out,
            key=key,
            interval=interval,
            prepared=prep,
            quiet=quiet,
            cfg=cfg,
            inputs=[str(raw), *files],
            samples=samples,
            dtype=dtype,
            channel=channel,
            plane=plane,
            roi=roi,
            crop=crop,
        )
        record: dict[str, Any] = {"input": str(raw), "output": str(out), "dtype": str(stored)}
        if region_of(prep.reader) is not None:
            record["crop"] = region_of(prep.reader)  # frames, rows, columns
        if prep.blank is not None:
            record["blank_frames"] = prep.blank.to_dict()  # passed through to every output
        if files:
            record["input_files"] = files
        record.update(extra or {})
        record["inference_seconds"] = seconds
        with defer_interrupts():
            _write_sidecar(_sidecar_path(out), model, record)
        ckpt.remove()
        summary = _summary(
            model,
            out=out,
            model_path=model_path,
            infer_seconds=seconds,
            n_frames=n_frames,
            shape=prep.shape,
            recording=prep.reader.metadata,
            interval=interval,
            samples=samples,
            dtype=stored,
        )
    return summary, model


def _denoise_planes(
    raw: Path,
    out: Path,
    *,
    model_out: Path | None,
    resume: bool,
    checkpoint_every: float,
    checkpoints: list[Path],
    quiet: bool,
    **options: Any,
) -> None:
    """``denoise --plane all``: each plane in turn, with its own noise model and network.

    Plane N goes to OUT.planeN (its model, sidecar, intervals and samples named after that, as
    for a single-plane OUT). Planes finished before an interrupt keep their outputs; with
    --resume, planes whose sidecar (written last) is there are not redone.
    """
    n_planes = count_planes(raw, key=options["key"])
    if n_planes is None:
        raise InputError(
            "--plane all needs a recording with planes (a ScanImage volume, a TIFF with a Z "
            "axis, or a 4-D NWB TwoPhotonSeries), but this file holds a single plane; leave "
            "--plane out",
            path=raw,
        )
    targets = []
    for number in range(1, n_planes + 1):
        name = f"plane{number}"
        plane_out = output_paths_like(out, [name])[0]
        plane_model = output_paths_like(model_out, [name])[0] if model_out else None
        targets.append((number, plane_out, plane_model))
        _check_output(plane_out, raw)
    checkpoints[:] = [_checkpoint_path(plane_out) for _, plane_out, _ in targets]
    noise_lines = []
    for (number, plane_out, plane_model), ckpt_path in zip(targets, checkpoints, strict=True):
        sidecar = _sidecar_path(plane_out)
        if resume and sidecar.is_file() and plane_out.exists() and not ckpt_path.exists():
            noise = json.loads(sidecar.read_text()).get("noise_model", {})
            noise_lines.append(
                f"plane {number}: gain {noise.get('gain', float('nan')):.3g} ADU/photon, offset "
                f"{noise.get('offset', float('nan')):.4g} ADU (kept from the earlier run)"
            )
            if not quiet:
                typer.echo(f"Plane {number} of {n_planes}: already written ({plane_out}); kept.")
            continue
        # With --resume, a plane not started yet (no checkpoint) simply starts.
        ckpt = Checkpoint(
            ckpt_path,
            resume=resume and ckpt_path.is_file(),
            every_s=checkpoint_every,
            remove_when_done=False,
        )
        summary, model = _denoise_one(
            raw,
            plane_out,
            plane=number,
            model_out=plane_model,
            ckpt=ckpt,
            quiet=quiet,
            extra={"plane": number, "planes": n_planes},
            **options,
        )
        n = model.noise
        noise_lines.append(
            f"plane {number}: gain {n.gain:.3g} ADU/photon, offset {n.offset:.4g} ADU, read "
            f"noise {n.read_noise:.3g} ADU"
        )
        if not quiet:
            typer.echo(f"Plane {number} of {n_planes}: {summary}")
    if not quiet:
        typer.echo(
            f"Denoised {n_planes} planes, each with its own noise model: "
            + "; ".join(noise_lines)
            + "."
        )


@app.command("train")
def train_cmd(
    raw: Annotated[Path, typer.Argument(help="Raw movie to train on.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (.pt).")],
    key: Key = None,
    channel: Channel = None,
    plane: Plane = None,
    roi: Roi = None,
    crop: CropOption = None,
    time_budget: Budget = 180.0,
    max_steps: MaxSteps = None,
    init: Init = None,
    context_frames: Context = None,
    width: Width = None,
    no_mean_image: NoMean = False,
    plane_context: PlaneContext = False,
    gain: Gain = None,
    offset: Offset = None,
    read_noise: ReadNoise = None,
    device: Device = "auto",
    threads: Threads = None,
    precision: PrecisionOption = None,
    seed: Seed = 0,
    resume: Resume = False,
    checkpoint_every: CheckpointEvery = 30.0,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a model on RAW and save it to OUT, to apply to other recordings of the rig.

    While training, a checkpoint (OUT without .pt, plus .checkpoint.pt) is kept; --resume
    continues from it after an interrupt. It is removed once the model is saved.
    """
    _setup_logging(verbose, quiet)
    ckpt = Checkpoint(
        _checkpoint_path(out), resume=resume, every_s=checkpoint_every, remove_when_done=False
    )
    with _errors(debug, checkpoint=ckpt.path):
        cfg = _config(
            time_budget_s=time_budget,
            max_steps=max_steps,
            context_frames=context_frames,
            width=width,
            use_mean_image=False if no_mean_image else None,
            plane_context=True if plane_context else None,
            gain=gain,
            offset=offset,
            read_noise=read_noise,
            device=device,
            threads=threads,
            precision=precision,
            seed=seed,
        )
        cfg, start = _adopt_init(cfg, init, context_frames, width, no_mean_image, plane_context)
        _check_output(out, raw)
        prep = _prepare_raw(
            raw, cfg, key=key, channel=channel, plane=_plane_number(plane), roi=roi, crop=crop
        )
        update, bar = _train_progress(quiet, cfg)
        with closing(prep), bar:
            model = train(
                prep.reader,
                config=cfg,
                prepared=prep,
                progress=update,
                checkpoint=ckpt,
                init=start,
            )
        with defer_interrupts():  # complete or absent, even on a signal
            path = save_model(model, out)
        ckpt.remove()
        if not quiet:
            typer.echo(
                _summary(
                    model, out=None, model_path=path, infer_seconds=None, n_frames=None, shape=None
                )
            )


@app.command("apply")
def apply_cmd(
    model_file: Annotated[Path, typer.Argument(help="Model file from `calmdown train`.")],
    raw: Annotated[Path, typer.Argument(help="Raw movie to denoise.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output movie (.tif, .h5, .zarr).")],
    key: Key = None,
    channel: Channel = None,
    plane: Plane = None,
    roi: Roi = None,
    crop: CropOption = None,
    output: Output = "posterior",
    interval: Interval = None,
    samples: Samples = 0,
    dtype: DType = "float32",
    gain: Gain = None,
    offset: Offset = None,
    read_noise: ReadNoise = None,
    chunk_frames: Chunk = None,
    dask: DaskFlag = False,
    dask_workers: DaskWorkers = None,
    dask_scheduler: DaskScheduler = None,
    device: Device = "auto",
    threads: Threads = None,
    runtime: RuntimeOption = None,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Denoise RAW with a trained model (another recording of the same rig is fine)."""
    _setup_logging(verbose, quiet)
    with _errors(debug):
        model = load_model(model_file)
        cfg = make_config(
            model.config,
            output=output,
            gain=gain,
            offset=offset,
            read_noise=read_noise,
            chunk_frames=chunk_frames,
            **chunk_options(chunk_frames),
            device=device,
            threads=threads,
            runtime=runtime,
        )
        _check_output(out, raw)
        _check_samples(samples, cfg)
        one_plane = _plane_number(plane)
        write_movies = _movie_writer(
            out,
            raw,
            dask=dask,
            workers=dask_workers,
            scheduler=dask_scheduler,
            channel=channel,
            plane=one_plane,
            roi=roi,
            crop=crop,
        )
        seconds, n_frames, stored = write_movies(
            model,
            raw,
            out,
            key=key,
            interval=interval,
            prepared=None,
            quiet=quiet,
            cfg=cfg,
            inputs=[str(raw), str(model_file)],
            samples=samples,
            dtype=dtype,
            channel=channel,
            plane=one_plane,
            roi=roi,
            crop=crop,
        )
        if not quiet:
            typer.echo(
                f"Denoised {n_frames} frames in {seconds:.1f} s "
                f"({n_frames / max(seconds, 1e-9):.1f} frames/s). "
                + _outputs_written(out, interval, samples, stored, model.noise)
            )


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write into.")],
    preset: Annotated[
        str, typer.Option("--preset", help="dense, sparse, noise or static.")
    ] = "dense",
    photons: Annotated[
        float, typer.Option("--photons", help="Photons per pixel per frame in resting cytoplasm.")
    ] = 1.0,
    frames: Annotated[int, typer.Option("--frames", help="Number of frames.")] = 2000,
    size: Annotated[int, typer.Option("--size", help="Frame side in pixels.")] = 128,
    seed: Seed = 0,
    debug: Debug = False,
) -> None:
    """Write a simulated movie with ground truth (raw, clean, ROIs, traces, events)."""
    from calmdown.simulate import simulate as run_simulation
    from calmdown.simulate import write_simulation

    with _errors(debug):
        sim = run_simulation(preset, photons=photons, shape=(frames, size, size), seed=seed)
        directory = write_simulation(sim, out)
        typer.echo(
            f"Wrote {directory}: raw.tif {sim.raw.shape}, clean.tif, labels.tif "
            f"({int(sim.labels.max())} ROIs), {len(sim.events)} rare events; detector gain "
            f"{sim.detector.conversion_gain:.3g} ADU/photon (photon transfer), offset "
            f"{sim.detector.offset:g} ADU."
        )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the demo files.")] = Path(
        "calmdown-demo"
    ),
    time_budget: Budget = 90.0,
    device: Device = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Denoise the built-in sample movie (simulated, with ground truth) and score it."""
    from calmdown.io import save_array
    from calmdown.simulate import sample_movie

    with _errors(debug):
        out.mkdir(parents=True, exist_ok=True)
        sim = sample_movie()
        raw_path = save_array(out / "raw.tif", sim.raw)
        save_array(out / "clean.tif", sim.clean)
        cfg = _config(time_budget_s=time_budget, device=device)
        prep = prepare(raw_path, cfg)
        update, bar = _train_progress(quiet, cfg)
        with closing(prep), bar:
            model = train(raw_path, config=cfg, prepared=prep, progress=update)
        model_path = save_model(model, out / "model.pt")
        den_path = out / "denoised.tif"
        seconds, n_frames, _ = _write_movies(
            model,
            raw_path,
            den_path,
            key=None,
            interval=0.9,
            prepared=None,
            quiet=quiet,
            cfg=cfg,
            inputs=[str(raw_path)],
        )
        from calmdown.io import open_movie

        with open_movie(den_path) as reader:
            den = reader.read(0, reader.shape[0])

        def psnr(x: np.ndarray) -> float:
            rng = float(sim.clean.max() - sim.clean.min())
            return float(10 * np.log10(rng**2 / np.mean((x - sim.clean) ** 2)))

        ma = _moving_average(sim.raw, 5)
        typer.echo(
            _summary(
                model,
                out=den_path,
                model_path=model_path,
                infer_seconds=seconds,
                n_frames=n_frames,
                shape=sim.raw.shape,
            )
        )
        typer.echo(
            f"Against the ground truth: PSNR raw {psnr(sim.raw):.1f} dB, 5-frame moving average "
            f"{psnr(ma):.1f} dB, calmdown {psnr(den):.1f} dB. Files in {out}/."
        )


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter1d

    return uniform_filter1d(x.astype(np.float32), width, axis=0, mode="nearest")


def _check_output(out: Path, raw: Path) -> None:
    """Refuse, before any work, an output that is the input or lies in an unwritable folder."""
    if Path(raw).exists() and same_file(out, Path(raw)):
        raise InputError(
            "the output path is the input movie; it would be overwritten: choose another -o",
            path=out,
        )
    folder = Path(out).expanduser().parent
    if not folder.is_dir():
        raise InputError(
            f"cannot write there: the folder {folder} does not exist; create it or choose "
            "another -o",
            path=out,
        )
    try:  # os.access says yes to root even where writing fails (read-only mounts, /proc)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{Path(out).name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise InputError(
            f"cannot write in the folder {folder} ({err.strerror}); choose a writable "
            "location with -o",
            path=out,
        ) from err


@app.command()
def report(
    raw: Annotated[Path, typer.Argument(help="Raw movie: TIFF, HDF5, Zarr or .npy (T, Y, X).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path(
        "report.html"
    ),
    model_file: Annotated[
        Path | None,
        typer.Option("--model", help="Model file from `calmdown train` (else trained on RAW)."),
    ] = None,
    denoised: Annotated[
        Path | None,
        typer.Option("--denoised", help="A denoised movie to review (else calmdown's own)."),
    ] = None,
    rois: Annotated[
        Path | None, typer.Option("--rois", help="ROIs whose traces to draw with corridors.")
    ] = None,
    key: Key = None,
    crop: CropOption = None,
    time_budget: Budget = 180.0,
    max_steps: MaxSteps = None,
    movie_frames: Annotated[
        int, typer.Option("--movie-frames", help="Consecutive frames in the embedded movie.")
    ] = 200,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write a self-contained HTML review of RAW: movie side by side, noise, calibration, checks."""
    from calmdown.report import write_report

    _setup_logging(verbose, quiet)
    with _errors(debug):
        model = load_model(model_file) if model_file is not None else None
        options: dict[str, Any] = {"device": device, "threads": threads}
        if model is None:
            options.update(time_budget_s=time_budget, max_steps=max_steps, seed=seed)
        _check_output(out, raw)
        if denoised is not None:
            _check_output(out, denoised)
        bars: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                for bar in bars.values():
                    bar.close()
                unit = "step" if stage == "training" else "frame"
                desc = "training" if stage == "training" else "analysing"
                bars[stage] = tqdm(
                    total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr
                )
            bars[stage].update(done - bars[stage].n)

        try:
            path = write_report(
                raw,
                out,
                model=model,
                denoised=denoised,
                key=key,
                crop=crop,
                rois=rois,
                movie_frames=movie_frames,
                progress=progress,
                **options,
            )
        finally:
            for bar in bars.values():
                bar.close()
        if not quiet:
            size = path.stat().st_size / 1e6
            typer.echo(f"Report written to {path} ({size:.1f} MB); open it in a browser.")


@app.command()
def evaluate(
    raw: Annotated[Path, typer.Argument(help="Raw movie: TIFF, HDF5, Zarr or .npy (T, Y, X).")],
    key: Key = None,
    crop: CropOption = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the estimate to this JSON file.")
    ] = None,
    max_frames: Annotated[
        int | None,
        typer.Option(
            "--max-frames",
            help="Evaluate at most this many frames, from the middle of the movie (default: "
            f"{EVALUATE_PIXELS // 2**20} M pixels' worth, about 3 GB of memory; the split "
            "holds several copies of the movie).",
        ),
    ] = None,
    time_budget: Budget = 180.0,
    max_steps: MaxSteps = None,
    gain: Gain = None,
    offset: Offset = None,
    read_noise: ReadNoise = None,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Estimate calmdown's PSNR gain on RAW without ground truth (photon split).

    Each frame's photons are split into two independent halves; calmdown is trained on and
    applied to one half and scored against the other.
    """
    from calmdown.evaluate import estimate_gain
    from calmdown.io import open_movie as open_raw
    from calmdown.noise import estimate_noise

    _setup_logging(verbose, quiet)
    with _errors(debug):
        cfg = _config(
            time_budget_s=time_budget,
            max_steps=max_steps,
            device=device,
            threads=threads,
            seed=seed,
        )
        if json_out is not None:
            _check_output(json_out, raw)
        with open_raw(raw, key=key, crop=crop) as reader:
            n, h, w = reader.shape
            if max_frames is not None and max_frames < 8:
                raise InputError(f"--max-frames must be at least 8, got {max_frames}")
            keep = min(n, max_frames or max(32, EVALUATE_PIXELS // (h * w)))
            first = (n - keep) // 2
            movie = np.asarray(reader.read(first, first + keep), dtype=np.float32)
            region = region_of(reader)  # frames named as the file numbers them
            first += 0 if region is None else region[0][0]
            n_file = len(reader.reader) if isinstance(reader, CroppedReader) else n
        # Blank frames (one value everywhere) measured nothing: scored, they would read as
        # perfectly denoised; the split and the scores take the measured frames only.
        blank = blank_mask(movie)
        left_out = first + np.flatnonzero(blank) if blank.any() and not blank.all() else []
        skipped = ""
        if len(left_out):
            skipped = (
                f" Frames {frame_runs(left_out)} are blank (one value in every pixel) and were "
                "left out."
            )
            movie = np.ascontiguousarray(movie[~blank])
        noise = estimate_noise(
            lambda s, e: movie[s:e],
            movie.shape[0],
            gain=gain,
            offset=offset,
            read_noise=read_noise,
            name=str(raw),
        )
        update, bar = _train_progress(quiet, cfg)
        with bar:
            result = estimate_gain(movie, noise=noise, seed=seed, config=cfg, progress=update)
        if json_out is not None:
            data = {
                "calmdown_version": __version__,
                "input": str(raw),
                "frames": [first, first + keep],
                **result.to_dict(),
            }
            if len(left_out):
                data["blank_frames_left_out"] = [int(t) for t in left_out]
            text = json.dumps(data, indent=2, default=str)
            write_atomic(json_out, lambda p: p.write_text(text), "estimate")
        clip = (
            f" Frames {first}:{first + keep} of {n_file}, from the middle of the movie "
            "(--max-frames; the split holds several copies of what it evaluates in memory)."
            if keep < n
            else ""
        )
        if not quiet:
            typer.echo(
                result.summary() + clip + skipped + (f" Written to {json_out}." if json_out else "")
            )


@app.command()
def traces(
    raw: Annotated[Path, typer.Argument(help="Raw movie: TIFF, HDF5, Zarr or .npy (T, Y, X).")],
    rois: Annotated[
        Path,
        typer.Option(
            "--rois",
            help="ROIs: label image (.npy/.tif, 0 = background), suite2p stat.npy, ImageJ .zip.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Writes OUT.npz, OUT.csv and OUT.png.")],
    model_file: Annotated[
        Path | None,
        typer.Option("--model", help="Model file from `calmdown train` (else trained on RAW)."),
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", help="Joint posterior samples behind the corridors.")
    ] = 64,
    level: Annotated[float, typer.Option("--level", help="Credible level of the corridors.")] = 0.9,
    baseline: Annotated[
        float, typer.Option("--baseline-percentile", help="Percentile of a trace taken as F0.")
    ] = 50.0,
    key: Key = None,
    crop: CropOption = None,
    time_budget: Budget = 180.0,
    max_steps: MaxSteps = None,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """ROI fluorescence and dF/F traces of RAW with credible corridors from joint samples."""
    from calmdown.io.rois import read_rois
    from calmdown.traces import roi_traces, write_traces

    _setup_logging(verbose, quiet)
    with _errors(debug):
        cfg = _config(
            time_budget_s=time_budget,
            max_steps=max_steps,
            device=device,
            threads=threads,
            seed=seed,
        )
        _check_output(out, raw)
        prep = prepare(raw, cfg, key=key, crop=crop)
        with closing(prep):
            region = read_rois(rois, frame_shape(prep.reader), crop_of(prep.reader))
            if model_file is not None:
                model = load_model(model_file)
            else:
                update, bar = _train_progress(quiet, cfg)
                with bar:
                    model = train(raw, config=cfg, prepared=prep, progress=update)
            with tqdm(
                total=prep.reader.shape[0],
                desc="sampling",
                unit="frame",
                disable=quiet,
                file=sys.stderr,
            ) as bar:
                result = roi_traces(
                    model,
                    prep.reader,
                    region,
                    samples=samples,
                    level=level,
                    baseline_percentile=baseline,
                    prepared=prep,
                    progress=bar.update,
                    device=device,
                    threads=threads,
                )
            files = write_traces(result, out)
        if not quiet:
            typer.echo(
                f"{len(region.ids)} ROI traces with {100 * level:.0f} % corridors from "
                f"{samples} joint samples: " + ", ".join(str(f) for f in files) + "."
            )


@app.command()
def version() -> None:
    """Print the calmdown version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``calmdown`` command."""
    limit_arenas()  # before any thread reads a movie (see calmdown.allocator)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
