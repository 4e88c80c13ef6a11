"""The computation behind the napari widget, as plain functions of arrays (no Qt).

:func:`iter_calmdown` trains calmdown on a movie and denoises it, yielding a
:class:`RunProgress` every fraction of a second, and returns the arrays the widget shows as
layers; :func:`run_calmdown` runs it to the end. Training runs in a helper thread so that the
generator can report progress (and notice a cancel request) while the network trains; the
public :func:`calmdown.train` only calls back after each held-out evaluation.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

import calmdown
from calmdown.errors import CalmdownError, InputError
from calmdown.io.padding import region_of

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUTS",
    "RunCancelled",
    "RunProgress",
    "RunSettings",
    "check_movie",
    "iter_calmdown",
    "run_calmdown",
]

#: Keys of the dict that :func:`run_calmdown` returns, in the order the widget adds layers.
OUTPUTS = ("denoised", "interval_width", "p_surprise")

# Share of the progress bar for each stage (preparing, training, denoising).
_STAGES = {
    "preparing": (0.0, 0.05),
    "training": (0.05, 0.7),
    "calibrating": (0.7, 0.85),
    "denoising": (0.85, 1.0),
}
_POLL_S = 0.2


class RunCancelled(CalmdownError):
    """Raised inside training when the user cancelled the run."""


@dataclass(frozen=True)
class RunSettings:
    """What the widget lets a user choose.

    Attributes
    ----------
    time_budget_s : float
        Wall-clock budget for training, in seconds.
    interval : float
        Level of the central credible interval whose width is returned (e.g. 0.9).
    seed : int
        Seed of training (patch positions, initial weights).
    max_steps : int or None
        Upper bound on optimisation steps (None: calmdown's default).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    cut_padding : bool
        Denoise only the frames, rows and columns measured in every frame: cut away the
        constant or NaN edges that motion correction fills in, and blank frames at the start
        and end (:func:`calmdown.io.padding.measured_region`). The outputs keep the movie's
        shape, NaN where it was cut. Off: such a movie is refused, with the padding named.
    """

    time_budget_s: float = 60.0
    interval: float = 0.9
    seed: int = 0
    max_steps: int | None = None
    device: str = "auto"
    cut_padding: bool = True

    def options(self) -> dict[str, Any]:
        """Return the flat options passed to :func:`calmdown.make_config`."""
        return {
            "time_budget_s": float(self.time_budget_s),
            "seed": int(self.seed),
            "max_steps": None if self.max_steps is None else int(self.max_steps),
            "device": self.device,
        }


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands.

    Attributes
    ----------
    stage : str
        ``"preparing"``, ``"training"``, ``"calibrating"``, ``"denoising"`` or ``"done"``.
    fraction : float
        Overall progress from 0 to 1.
    message : str
        One line for a status label.
    """

    stage: str
    fraction: float
    message: str


def check_movie(data: Any, *, name: str = "the layer") -> tuple[int, int, int]:
    """Check that ``data`` is a movie calmdown can denoise; return its ``(T, Y, X)`` shape.

    Parameters
    ----------
    data : array-like
        The image data (numpy, dask, zarr...).
    name : str
        What holds the data, named in the message.

    Returns
    -------
    tuple of int
        ``(T, Y, X)``.

    Raises
    ------
    InputError
        When the data are not 3-D or not of a real numeric type; the message gives the
        shape received and what to do.
    """
    shape = tuple(int(n) for n in getattr(data, "shape", ()))
    if len(shape) != 3:
        what = {2: "a single 2-D image"}.get(len(shape), f"{len(shape)}-D data")
        raise InputError(
            f"{name} holds {what} of shape {shape}; calmdown needs a 3-D movie (T, Y, X): "
            "choose an image layer with time as its first axis (split channels or planes "
            "into separate layers first)"
        )
    kind = np.dtype(getattr(data, "dtype", np.float32)).kind
    if kind not in "iuf":
        raise InputError(
            f"{name} has data type {data.dtype}; calmdown needs real intensities (an integer "
            "or floating-point type)"
        )
    return shape[0], shape[1], shape[2]


def _at(stage: str, within: float) -> float:
    lo, hi = _STAGES[stage]
    return lo + (hi - lo) * min(max(within, 0.0), 1.0)


def iter_calmdown(
    data: Any,
    settings: RunSettings | None = None,
    *,
    stop: threading.Event | None = None,
) -> Generator[RunProgress, None, dict[str, np.ndarray]]:
    """Train calmdown on a movie and denoise it, yielding progress; return the outputs.

    Parameters
    ----------
    data : array-like
        ``(T, Y, X)`` movie in the detector's units (numpy, or a lazy dask/zarr array, which
        is read block by block). Not modified.
    settings : RunSettings, optional
        Training budget, interval level, seed.
    stop : threading.Event, optional
        Set it to cancel: training stops at its next held-out evaluation, denoising at the
        next chunk, and :class:`RunCancelled` is raised.

    Yields
    ------
    RunProgress
        At least every 0.2 s while training, and after each denoised chunk.

    Returns
    -------
    dict of str to numpy.ndarray
        float32 arrays of the input's shape: ``denoised`` (posterior mean, ADU),
        ``interval_width`` (upper minus lower bound of the central credible interval at
        ``settings.interval``, ADU) and ``p_surprise`` (probability that the context
        network's prediction missed a real event, 0 to 1); NaN in what
        ``settings.cut_padding`` cut away.

    Raises
    ------
    InputError
        For data that are not a movie calmdown can use (e.g. 2-D, too few frames).
    RunCancelled
        When ``stop`` was set.

    Examples
    --------
    >>> import calmdown
    >>> sim = calmdown.simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
    >>> run = iter_calmdown(sim.raw, RunSettings(time_budget_s=5, max_steps=5))
    >>> [report.stage for report in run][-1]
    'done'
    """
    settings = settings or RunSettings()
    stop = stop or threading.Event()
    n_frames, h, w = check_movie(data, name="the movie")
    if not 0 < settings.interval < 1:
        raise InputError(f"interval must be between 0 and 1 (e.g. 0.9), got {settings.interval}")
    config = calmdown.make_config(**settings.options())
    yield RunProgress("preparing", 0.0, "estimating the noise model and mean image…")
    if stop.is_set():
        raise RunCancelled("cancelled before starting")
    prepared = calmdown.prepare(data, config, crop="auto" if settings.cut_padding else None)
    try:
        region = region_of(prepared.reader)
        (t0, t1), (y0, y1), (x0, x1) = region or ((0, n_frames), (0, h), (0, w))
        if stop.is_set():
            raise RunCancelled("cancelled while preparing")
        model = yield from _train_with_progress(prepared.reader, config, prepared, stop)
        # What was cut away holds no estimate: NaN, so the layers still overlay the movie.
        outputs = {key: np.full((n_frames, h, w), np.nan, np.float32) for key in OUTPUTS}
        chunks = calmdown.iter_apply(
            model, prepared.reader, interval=settings.interval, prepared=prepared
        )
        try:
            for chunk in chunks:
                if stop.is_set():
                    raise RunCancelled("cancelled while denoising")
                where = (slice(t0 + chunk.start, t0 + chunk.stop), slice(y0, y1), slice(x0, x1))
                outputs["denoised"][where] = chunk.denoised
                if chunk.lower is None or chunk.upper is None or chunk.p_surprise is None:
                    raise CalmdownError("iter_apply returned no interval; report this bug")
                outputs["interval_width"][where] = chunk.upper - chunk.lower
                outputs["p_surprise"][where] = chunk.p_surprise
                yield RunProgress(
                    "denoising",
                    _at("denoising", (t0 + chunk.stop) / n_frames),
                    f"denoised frames {t0 + chunk.stop} / {n_frames}",
                )
        finally:
            chunks.close()
    finally:
        prepared.close()
    steps = model.training["steps"]
    seconds = model.training["seconds"]
    message = f"done: {steps} training steps in {seconds:.0f} s"
    if region is not None:
        message += (
            f"; denoised frames {t0}:{t1}, rows {y0}:{y1}, columns {x0}:{x1}, the part measured "
            "in every frame (the rest, motion correction's padding or blank frames, is NaN)"
        )
    yield RunProgress("done", 1.0, message)
    return outputs


def _train_with_progress(
    data: Any,
    config: calmdown.Config,
    prepared: Any,
    stop: threading.Event,
) -> Generator[RunProgress, None, calmdown.TrainedModel]:
    """Run :func:`calmdown.train` in a helper thread, yielding progress while it runs."""
    reports: queue.Queue[Any] = queue.Queue()
    halt = threading.Event()  # set when this generator ends, however it ends
    budget = config.train.time_budget_s
    max_steps = config.train.max_steps

    def on_progress(info: Any) -> None:
        if stop.is_set() or halt.is_set():
            raise RunCancelled("cancelled while training")
        reports.put(info)

    def target() -> None:
        try:
            model = calmdown.train(data, config=config, progress=on_progress, prepared=prepared)
        except BaseException as err:  # noqa: BLE001 - handed to the generator's thread
            reports.put(err)
        else:
            reports.put(model)

    thread = threading.Thread(target=target, name="calmdown-train", daemon=True)
    start = time.perf_counter()
    thread.start()
    last_step = 0  # the step of the latest held-out evaluation (0: none yet)
    final_at: float | None = None  # when the last training step was reported
    try:
        while True:
            try:
                item = reports.get(timeout=_POLL_S)
            except queue.Empty:
                item = None
            if isinstance(item, calmdown.TrainedModel):
                return item
            if isinstance(item, BaseException):
                raise item
            now = time.perf_counter()
            if item is not None:
                last_step = item.step
                out_of_time = budget is not None and item.seconds >= budget
                if item.phase == "calibrating" or item.step >= max_steps or out_of_time:
                    final_at = now
            if final_at is not None:
                # Training is over; the helper fits the calibration (duration unknown).
                yield RunProgress(
                    "calibrating",
                    _at("calibrating", 1.0 - np.exp(-(now - final_at) / 30.0)),
                    f"trained {last_step} steps; calibrating the uncertainty on held-out frames…",
                )
            else:
                elapsed = now - start
                within = last_step / max_steps
                if budget is not None:
                    within = max(within, elapsed / budget)
                message = f"training: {elapsed:.0f} s" + (
                    f" of {budget:.0f} s" if budget is not None else ""
                )
                if budget is not None and elapsed >= budget:
                    message = "training: time budget reached, last held-out evaluation…"
                yield RunProgress(
                    "training",
                    _at("training", within),
                    message + (f" (step {last_step})" if last_step else ""),
                )
            if stop.is_set():
                raise RunCancelled("cancelled while training")
    finally:
        # On cancel, error or close, the helper stops at its next held-out evaluation.
        halt.set()


def run_calmdown(
    data: Any,
    settings: RunSettings | None = None,
    *,
    progress: Callable[[RunProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, np.ndarray]:
    """Train calmdown on a movie and denoise it; return denoised, interval width, p_surprise.

    The plain-function form of :func:`iter_calmdown` (same arguments and outputs), for
    scripts and tests.

    Parameters
    ----------
    data : array-like
        ``(T, Y, X)`` movie in the detector's units. Not modified.
    settings : RunSettings, optional
        Training budget, interval level, seed.
    progress : callable, optional
        Called with each :class:`RunProgress`.
    stop : threading.Event, optional
        Set it (from another thread) to cancel.

    Returns
    -------
    dict of str to numpy.ndarray
        ``denoised``, ``interval_width`` and ``p_surprise``, float32, the input's shape.

    Examples
    --------
    >>> import calmdown
    >>> sim = calmdown.simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
    >>> out = run_calmdown(sim.raw, RunSettings(time_budget_s=5, max_steps=5))
    >>> sorted(out), out["p_surprise"].shape
    (['denoised', 'interval_width', 'p_surprise'], (60, 32, 32))
    """
    run = iter_calmdown(data, settings, stop=stop)
    while True:
        try:
            report = next(run)
        except StopIteration as done:
            return done.value
        if progress is not None:
            progress(report)
