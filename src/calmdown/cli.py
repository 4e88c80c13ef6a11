"""Command line: parse options, build a Config, call the API, show progress, write files.

Errors a user can cause print one line (``error: <file>: <problem>; <fix>``) and exit with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
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
from calmdown.config import Config, make_config
from calmdown.errors import CalmdownError, InputError
from calmdown.io import MovieWriter, output_paths_like, same_file
from calmdown.persist import load_model, save_model
from calmdown.pipeline import Prepared, TrainedModel, iter_apply, prepare, train
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
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Threads = Annotated[int | None, typer.Option("--threads", help="CPU threads for PyTorch.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of every random choice.")]
Budget = Annotated[
    float, typer.Option("--time-budget", help="Training wall-clock budget in seconds.")
]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="Most training steps.")]
Context = Annotated[
    int | None, typer.Option("--context-frames", help="K: frames on each side as context.")
]
NoMean = Annotated[
    bool, typer.Option("--no-mean-image", help="Do not feed the time-averaged image.")
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
Chunk = Annotated[int | None, typer.Option("--chunk-frames", help="Frames processed at once.")]


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
def _errors(debug: bool) -> Iterator[None]:
    """Turn errors into one line and an exit status; tracebacks only with --debug.

    Warnings print as one line too, for the duration of the command only.
    """
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            yield
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing was written under the final output name", err=True)
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
    return make_config(Config(), **flat)


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
    for ext in (".ome.zarr", ".zarr", ".tiff", ".tif", ".btf", ".hdf5", ".h5", ".npy"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return out.with_name(base + suffix)


def _model_path(out: Path) -> Path:
    return _beside(out, ".model.pt")


def _sidecar_path(out: Path) -> Path:
    return _beside(out, ".calmdown.json")


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
) -> tuple[float, int]:
    """Stream the denoised movie (and intervals) to files; return (seconds, frames)."""
    prep = prepared or prepare(raw, cfg, key=key)
    shape = prep.reader.shape
    targets = {"denoised": out}
    if interval is not None:
        lower, upper = output_paths_like(out, ["lower", "upper"])
        targets.update(lower=lower, upper=upper)
    t0 = time.perf_counter()
    with ExitStack() as stack:
        if prepared is None:
            stack.callback(prep.close)
        writers = {
            name: stack.enter_context(
                MovieWriter(path, shape, dtype="float32", inputs=inputs, key=key or "data")
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
        ):
            for name, writer in writers.items():
                writer.write(chunk.start, getattr(chunk, name))
            bar.update(chunk.stop - chunk.start)
    return time.perf_counter() - t0, shape[0]


def _summary(
    model: TrainedModel,
    *,
    out: Path | None,
    model_path: Path | None,
    infer_seconds: float | None,
    n_frames: int | None,
    shape: tuple[int, ...] | None,
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
        f"Training: {t['steps']} steps in {t['seconds']:.1f} s on {t['device']} "
        f"(stopped: {t['stopped_because'].replace('_', ' ')}), held-out loss "
        f"{t['best_val_loss']:.4f}.",
        f"Calibration on held-out frames: {100 * h['coverage']:.1f} % of raw values inside their "
        f"predicted {100 * h['level']:.0f} % intervals, PIT KS distance {h['pit_ks']:.3f}.",
    ]
    if infer_seconds is not None and n_frames:
        parts.append(
            f"Inference: {n_frames} frames of {shape[1]} x {shape[2]} in {infer_seconds:.1f} s "  # type: ignore[index]
            f"({n_frames / max(infer_seconds, 1e-9):.1f} frames/s)."
        )
    if out is not None:
        parts.append(f"Denoised movie (float32): {out}.")
    if model_path is not None:
        parts.append(f"Model saved to {model_path}.")
    return " ".join(parts)


def _write_sidecar(path: Path, model: TrainedModel, extra: dict[str, Any]) -> None:
    data = {
        "calmdown_version": __version__,
        "config": model.config.model_dump(mode="json"),
        "noise_model": model.noise.to_dict(),
        "training": model.training,
        "heldout_check": model.heldout,
        **extra,
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, default=str))
    os.replace(partial, path)


# -- commands ---------------------------------------------------------------------------------


@app.command()
def denoise(
    raw: Annotated[Path, typer.Argument(help="Raw movie: TIFF, HDF5, Zarr or .npy (T, Y, X).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output movie (.tif, .h5, .zarr).")],
    key: Key = None,
    model_out: Annotated[
        Path | None, typer.Option("--model-out", help="Where to save the model.")
    ] = None,
    output: Output = "posterior",
    interval: Interval = None,
    time_budget: Budget = 180.0,
    max_steps: MaxSteps = None,
    context_frames: Context = None,
    no_mean_image: NoMean = False,
    gain: Gain = None,
    offset: Offset = None,
    read_noise: ReadNoise = None,
    chunk_frames: Chunk = None,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train on RAW itself and write the denoised movie to OUT (float32, same shape)."""
    _setup_logging(verbose, quiet)
    with _errors(debug):
        cfg = _config(
            output=output,
            time_budget_s=time_budget,
            max_steps=max_steps,
            context_frames=context_frames,
            use_mean_image=False if no_mean_image else None,
            gain=gain,
            offset=offset,
            read_noise=read_noise,
            chunk_frames=chunk_frames,
            device=device,
            threads=threads,
            seed=seed,
        )
        _check_output(out, raw)
        prep = prepare(raw, cfg, key=key)
        with closing(prep):
            update, bar = _train_progress(quiet, cfg)
            with bar:
                model = train(raw, config=cfg, prepared=prep, progress=update)
            model_path = save_model(model, model_out or _model_path(out))
            seconds, n_frames = _write_movies(
                model,
                raw,
                out,
                key=key,
                interval=interval,
                prepared=prep,
                quiet=quiet,
                cfg=cfg,
                inputs=[str(raw)],
            )
            _write_sidecar(
                _sidecar_path(out),
                model,
                {"input": str(raw), "output": str(out), "inference_seconds": seconds},
            )
            if not quiet:
                typer.echo(
                    _summary(
                        model,
                        out=out,
                        model_path=model_path,
                        infer_seconds=seconds,
                        n_frames=n_frames,
                        shape=prep.reader.shape,
                    )
                )


@app.command("train")
def train_cmd(
    raw: Annotated[Path, typer.Argument(help="Raw movie to train on.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (.pt).")],
    key: Key = None,
    time_budget: Budget = 180.0,
    max_steps: MaxSteps = None,
    context_frames: Context = None,
    no_mean_image: NoMean = False,
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
    """Train a model on RAW and save it to OUT, to apply to other recordings of the rig."""
    _setup_logging(verbose, quiet)
    with _errors(debug):
        cfg = _config(
            time_budget_s=time_budget,
            max_steps=max_steps,
            context_frames=context_frames,
            use_mean_image=False if no_mean_image else None,
            gain=gain,
            offset=offset,
            read_noise=read_noise,
            device=device,
            threads=threads,
            seed=seed,
        )
        _check_output(out, raw)
        update, bar = _train_progress(quiet, cfg)
        with bar:
            model = train(raw, config=cfg, key=key, progress=update)
        path = save_model(model, out)
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
    output: Output = "posterior",
    interval: Interval = None,
    gain: Gain = None,
    offset: Offset = None,
    read_noise: ReadNoise = None,
    chunk_frames: Chunk = None,
    device: Device = "auto",
    threads: Threads = None,
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
            device=device,
            threads=threads,
        )
        _check_output(out, raw)
        seconds, n_frames = _write_movies(
            model,
            raw,
            out,
            key=key,
            interval=interval,
            prepared=None,
            quiet=quiet,
            cfg=cfg,
            inputs=[str(raw), str(model_file)],
        )
        if not quiet:
            typer.echo(
                f"Denoised {n_frames} frames in {seconds:.1f} s "
                f"({n_frames / max(seconds, 1e-9):.1f} frames/s): {out}."
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
        seconds, n_frames = _write_movies(
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
    if Path(raw).exists() and same_file(out, Path(raw)):
        raise InputError(
            "the output path is the input movie; it would be overwritten: choose another -o",
            path=out,
        )


@app.command()
def version() -> None:
    """Print the calmdown version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``calmdown`` command."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
