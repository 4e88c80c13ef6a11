"""The denoiser end to end: noise model, mean image, training, calibration, streamed inference.

Everything here takes arrays or :class:`~calmdown.io.MovieReader` objects and returns arrays or
generators of chunks; reading and writing files is left to :mod:`calmdown.io` and the CLI.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from calmdown import __version__
from calmdown.allocator import large_arrays, limit_arenas, release_freed_memory
from calmdown.calibration import (
    CHANGE_FRAMES,
    CHANGE_PIXELS,
    TIMING_WEIGHT,
    CalibrationStages,
    ScaleCalibration,
    calibration_resolution,
    fit_level_stage,
    fit_scale_calibration,
    fit_stratified_calibration,
    predictive_check,
    staged_part,
    temporal_change,
    timing_variance,
)
from calmdown.checkpoint import Checkpoint, run_training
from calmdown.config import (
    CHUNK_PIXELS,
    Config,
    GuardConfig,
    ModelConfig,
    chunk_options,
    make_config,
)
from calmdown.context import (
    BlockFile,
    MeanImage,
    compute_mean_image,
    context_indices,
    min_frames,
)
from calmdown.correction import ResidualCorrection, fit_correction
from calmdown.departure import DepartureVariance, fit_departure
from calmdown.device import resolve_device, training_dtype
from calmdown.errors import InputError
from calmdown.io import MovieReader, open_movie
from calmdown.io.gaps import BlankFrames, SkipFramesReader, find_blank_frames
from calmdown.io.padding import BlankFramesError, Crop, checked_reader
from calmdown.neighbours import NeighbourPlanes
from calmdown.network import ContextNet
from calmdown.noise import NoiseModel, estimate_noise
from calmdown.posterior import (
    GuardOutput,
    average_in_time,
    evidence_windows,
    evidence_zscores,
    guard_halo,
    guarded_posterior,
    predictive_pit,
    surprise_guard,
    window_count,
    window_sum,
)
from calmdown.propagation import (
    EPS,
    WINDOW,
    frame_noise,
    input_noise_sd,
    probe_frames,
    probe_halo,
)
from calmdown.runtime import InferenceNetwork, Runtime, inference_network
from calmdown.samples import (
    ErrorCorrelation,
    MeanNoiseCoupling,
    SampleStream,
    estimate_error_correlation,
)
from calmdown.tiling import TimeChunk, predict_tiled, time_chunks
from calmdown.train import Segment, Trainer, TrainProgress, held_out_mask, make_network

__all__ = [
    "DenoisedChunk",
    "TrainedModel",
    "adopt_network",
    "apply",
    "denoise",
    "iter_apply",
    "prepare",
    "train",
]

logger = logging.getLogger(__name__)

MovieLike = Any  # np.ndarray | str | os.PathLike | MovieReader


@dataclass
class Prepared:
    """First pass over a movie: its noise model and running mean image.

    ``planes`` holds the neighbouring planes of a volume recording, for a network with plane
    context (see :mod:`calmdown.neighbours`), each with its own noise model and mean image.
    """

    reader: MovieReader
    noise: NoiseModel
    mean_image: MeanImage
    owns_reader: bool = True
    planes: NeighbourPlanes | None = None
    blank: BlankFrames | None = None
    """The movie's blank frames, where it has any: ``reader`` then reads it without them
    (:class:`~calmdown.io.gaps.SkipFramesReader`) and :func:`iter_apply` puts them back."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, Y, X) of the movie, blank frames included (what the outputs have)."""
        n, h, w = self.reader.shape
        return (self.blank.n_frames if self.blank is not None else n, h, w)

    def close(self) -> None:
        """Close what this pass opened: the reader, the neighbouring planes, the block means."""
        if self.owns_reader:
            self.reader.close()
        if isinstance(self.mean_image.means, BlockFile):
            self.mean_image.means.close()
        if self.planes is not None:
            self.planes.close()


@dataclass
class TrainedModel:
    """A trained context network with everything needed to apply it.

    Attributes
    ----------
    config : Config
        Settings it was trained with.
    noise : NoiseModel
        Noise model of the training movie.
    scale0 : float
        Brightness scale (photons) network inputs are divided by.
    state_dict : dict
        Network weights.
    calibration : ScaleCalibration
        Per-bin factors on the prior variance, fitted on held-out frames.
    guard_null_scales : tuple of float
        Standard deviation of each guard evidence window's z-score on held-out frames, one
        per :func:`~calmdown.posterior.evidence_windows` (a format 4 model file has one).
    correction : ResidualCorrection or None
        The fitted soma-scale residual correction.
    error_correlation : ErrorCorrelation
        Space-time correlation of the posterior error, for joint samples.
    final_calibration : CalibrationStages
        Factors on the final prior variance by brightness and activity, fitted on held-out
        frames.
    departure : DepartureVariance
        Variance of the prior's departure from the mean image that held-out frames doubt
        (none for model files of format 11 and before).
    training : dict
        Steps, seconds, best held-out loss, why it stopped.
    heldout : dict
        Predictive check on held-out frames (coverage of 90 % raw intervals, PIT KS).
    data_hash : str
        Hash of the training movie's summary (shape, noise model, mean image).
    version : str
        calmdown version that trained it.
    path : str or None
        The model file it was read from (``None`` for a model trained in this process).
    """

    config: Config
    noise: NoiseModel
    scale0: float
    state_dict: dict[str, torch.Tensor]
    calibration: ScaleCalibration
    guard_null_scales: tuple[float, ...]
    correction: ResidualCorrection | None
    training: dict[str, Any]
    heldout: dict[str, Any]
    data_hash: str
    error_correlation: ErrorCorrelation = field(default_factory=ErrorCorrelation.independent)
    final_calibration: CalibrationStages = field(default_factory=CalibrationStages.identity)
    departure: DepartureVariance = field(default_factory=DepartureVariance.identity)
    version: str = __version__
    path: str | None = field(default=None, compare=False)
    _net: ContextNet | None = field(default=None, repr=False)
    _runtime: tuple[Any, InferenceNetwork] | None = field(default=None, repr=False)

    def network(self, device: torch.device) -> ContextNet:
        """Return the network on ``device``, in evaluation mode."""
        if self._net is None or next(self._net.parameters()).device != device:
            net = make_network(self.config.model)
            net.load_state_dict(self.state_dict)
            self._net = net.to(device).eval()
        return self._net

    def inference_network(self, device: torch.device, runtime: Runtime) -> InferenceNetwork:
        """Return the network as inference runs it (see :mod:`calmdown.runtime`), kept."""
        key = (device, runtime)
        if self._runtime is None or self._runtime[0] != key:
            self._runtime = (key, inference_network(self.network(device), device, runtime))
        return self._runtime[1]


@dataclass
class DenoisedChunk:
    """Results for frames ``start..stop`` (ADU, float32 arrays of shape (n, Y, X))."""

    start: int
    stop: int
    denoised: np.ndarray
    prior: np.ndarray
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    p_surprise: np.ndarray | None = None
    samples: np.ndarray | None = None
    """(n_samples, n, Y, X) joint samples of the clean movie, when asked for ((n_samples, n,
    P) where only P pixels were asked for, ``sample_pixels`` of :func:`iter_apply`)."""

    def output(self, name: str) -> np.ndarray:
        """Return the array an output is named after: a field, or ``sampleN`` (N from 1)."""
        if name.startswith("sample"):
            assert self.samples is not None
            return self.samples[int(name[6:]) - 1]
        return getattr(self, name)


# -- first pass ----------------------------------------------------------------------------


def _set_threads(config: Config) -> None:
    if config.threads is not None:
        torch.set_num_threads(config.threads)


def prepare(
    movie: MovieLike,
    config: Config,
    *,
    key: str | None = None,
    noise: NoiseModel | None = None,
    neighbours: Sequence[MovieLike] | None = None,
    crop: Crop | str | None = None,
    blank_frames: str = "skip",
) -> Prepared:
    """Open a movie, estimate its noise model (unless given) and its running mean image.

    ``crop``: rows and columns to read, or ``"auto"`` (see :func:`calmdown.io.open_movie`).

    ``blank_frames``: where frames hold one value in every pixel (a closed shutter, dropped
    frames), ``"skip"`` reads the movie without them (one more pass over it finds them all;
    ``Prepared.blank`` says where they are) and ``"error"`` stops with an :class:`InputError`
    naming them. A volume's planes (``neighbours``) must have none.

    ``neighbours``: the planes above and below of a volume recording (the one neighbour twice
    at the volume's edge), for a network with plane context; each gets its own noise model
    and mean image.

    On glibc this limits the process to two malloc arenas (see
    :func:`calmdown.allocator.limit_arenas`): the threads reading the movie then do not keep
    heaps of their own.
    """
    limit_arenas()
    if blank_frames not in ("skip", "error"):
        raise ValueError(f"blank_frames must be 'skip' or 'error', got {blank_frames!r}")
    owns = not isinstance(movie, MovieReader)
    reader = open_movie(movie, key=key, crop=crop)
    try:
        try:
            prep = _prepare(reader, config, noise, owns)
        except BlankFramesError:
            if blank_frames == "error" or neighbours is not None:
                raise
            blank = find_blank_frames(reader)
            prep = _prepare(SkipFramesReader(reader, blank), config, noise, owns)
            prep.blank = blank
            logger.info(
                "%s: frames %s are blank; read without them and passed through to the outputs",
                reader.path or "the movie",
                blank.describe(),
            )
    except BaseException:
        if owns:
            reader.close()
        raise
    if neighbours is not None:
        try:
            prep.planes = _prepare_neighbours(neighbours, prep.reader.shape, config, key=key)
        except BaseException:
            prep.close()
            raise
    return prep


def _prepare_neighbours(
    neighbours: Sequence[MovieLike], shape: tuple[int, int, int], config: Config, *, key: str | None
) -> NeighbourPlanes:
    """Open the neighbouring planes (each distinct source once) and make their first pass."""
    opened: dict[int, MovieReader] = {}
    owned: list[MovieReader] = []
    readers = []
    try:
        for source in neighbours:
            if id(source) not in opened:
                reader = open_movie(source, key=key)
                opened[id(source)] = reader
                if reader is not source:
                    owned.append(reader)
            readers.append(opened[id(source)])
        planes = NeighbourPlanes.prepare(
            readers,
            shape,
            estimate=lambda r: _estimate_noise(r, config),
            window=config.model.mean_window,
        )
    except BaseException:
        for reader in owned:
            reader.close()
        raise
    planes.owned = owned
    return planes


def _estimate_noise(reader: MovieReader, config: Config) -> NoiseModel:
    nc = config.noise
    return estimate_noise(
        checked_reader(reader),  # padded or blank frames named as the file numbers them
        reader.shape[0],
        gain=nc.gain,
        offset=nc.offset,
        read_noise=nc.read_noise,
        max_frames=nc.max_frames,
        name=str(reader.path) if reader.path is not None else None,
    )


def _prepare(reader: MovieReader, config: Config, noise: NoiseModel | None, owns: bool) -> Prepared:
    n_frames = reader.shape[0]
    name = str(reader.path) if reader.path is not None else None
    k = config.model.context_frames
    if n_frames < min_frames(k):
        raise InputError(
            f"the movie has {n_frames} frames; a context of {k} frames on each side needs at "
            f"least {min_frames(k)}: pass a longer recording or --context-frames "
            f"{max(1, (n_frames - 1) // 2)}",
            path=name,
        )
    if noise is None:
        noise = _estimate_noise(reader, config)
    h, w = reader.shape[1:]
    mean_image = compute_mean_image(
        checked_reader(reader),  # frames the noise estimate did not read
        n_frames,
        window=config.model.mean_window,
        to_photons=noise.to_photons,
        chunk=max(8, min(256, CHUNK_PIXELS // (h * w))),
    )
    return Prepared(reader=reader, noise=noise, mean_image=mean_image, owns_reader=owns)


def _data_hash(prep: Prepared) -> str:
    h = hashlib.sha256()
    h.update(repr(prep.reader.shape).encode())
    h.update(repr(sorted(prep.noise.to_dict().items())).encode())
    h.update(np.ascontiguousarray(prep.mean_image.means[:, ::4, ::4]).tobytes())
    return h.hexdigest()[:16]


_TRAIN_BYTES = 400_000_000
"""Most bytes of frames (float32 photons) held for training and calibration: 381 frames of
512 x 512, every frame of a 128 x 128 movie of up to 6100. With 1 GB (953 frames) the
training and calibration of a 512 x 512 x 1000 movie peaked at 3.5 GB."""


def _training_segments(prep: Prepared, config: Config) -> list[Segment]:
    reader, noise, planes = prep.reader, prep.noise, prep.planes
    n_frames, h, w = reader.shape
    layers = 1 + (planes.channels if planes is not None else 0)
    budget = min(
        config.train.max_train_frames,
        max(_TRAIN_BYTES // (4 * h * w * layers), 64),
        n_frames,
    )
    need = max(min_frames(config.model.context_frames), 64)
    if budget >= n_frames:
        starts, length = np.array([0]), n_frames
    else:  # segments spread over the movie, of at least 256 frames, at least two
        n_seg = max(2, budget // 256) if budget >= 2 * need else 1
        length = max(budget // n_seg, need)
        starts = np.linspace(0, n_frames - length, n_seg).round().astype(int)
    return [
        Segment(
            int(s),
            noise.to_photons(reader.read(int(s), int(s) + length)),
            planes.read(int(s), int(s) + length) if planes is not None else None,
        )
        for s in starts
    ]


# -- prediction ----------------------------------------------------------------------------


@dataclass
class PriorPrediction:
    """The context prior for a run of frames (photon units, tensors on the device).

    ``loc`` and ``var`` come from the network; ``mean`` is the mean image it was given (without
    the frame's own value); ``propagated`` is the variance of ``loc`` due to the noise in the
    network's inputs (see :mod:`calmdown.propagation`), or None.
    """

    loc: torch.Tensor
    var: torch.Tensor
    mean: torch.Tensor
    propagated: torch.Tensor | None = None
    probes: Probes | None = None

    def tail(self, start: int) -> PriorPrediction:
        """Copy frames ``start..`` (and the probes from there), to carry them to a next run.

        Every prediction of a frame is the same whichever run it is made in, so the frames
        two runs share need predicting once; ``propagated`` is not carried (it is averaged
        over each run's probes).
        """
        return PriorPrediction(
            self.loc[start:].clone(),
            self.var[start:].clone(),
            self.mean[start:].clone(),
            probes=self.probes.since(self.probes.start + start) if self.probes else None,
        )


@dataclass
class Probes:
    """The noise probes of a run of predicted frames (see :mod:`calmdown.propagation`).

    Attributes
    ----------
    start : int
        Absolute index of the run's first frame.
    frames : list of int
        Absolute indices of the probed frames, increasing.
    sums : list of Tensor
        Each probed frame's propagated variance summed over the spatial window of
        :data:`~calmdown.propagation.WINDOW`.
    totals : list of float
        Each probed frame's propagated variance summed over the frame.
    """

    start: int
    frames: list[int]
    sums: list[torch.Tensor]
    totals: list[float]

    def since(self, start: int) -> Probes:
        """Keep the probes of frames ``start..`` (absolute)."""
        i = int(np.searchsorted(self.frames, start))
        return Probes(start, self.frames[i:], self.sums[i:], self.totals[i:])

    def then(self, later: Probes) -> Probes:
        """Append the probes of a ``later`` run."""
        return Probes(
            self.start,
            self.frames + later.frames,
            self.sums + later.sums,
            self.totals + later.totals,
        )


_BATCH_PIXELS = 1 << 19
"""Most pixels (frames x pixels per frame) per network call: 2 frames of 512 x 512, 8 of
256 x 256 or 128 x 128 (``batch_frames``). At 512 x 512 the activations take ~106 MB a call
(212 MB for 4 frames), and inference ran faster end to end: 2.82 frames/s against 2.58 for 4
and 2.33 for 1 (medians of 3 alternating runs, 2 threads, ``--interval 0.9``); 4 x 4 frames
took 600 MB, no faster."""


@torch.no_grad()
def _predict_prior(
    net: InferenceNetwork,
    photons: np.ndarray,
    offset: int,
    n_frames: int,
    targets: np.ndarray,
    mean_image: MeanImage | _SegmentMean,
    *,
    scale0: float,
    config: Config,
    device: torch.device,
    noise: NoiseModel | None = None,
    frame_base: int = 0,
    planes: NeighbourPlanes | None = None,
    plane_photons: np.ndarray | None = None,
    region: tuple[slice, slice] = (slice(None), slice(None)),
    out: PriorPrediction | None = None,
    average: bool = True,
    coupling: MeanNoiseCoupling | None = None,
) -> PriorPrediction:
    """Prior location and variance (photon units, on ``device``) of frames ``targets``.

    ``photons`` holds frames ``offset..offset + len(photons)`` of a movie of ``n_frames``
    frames, including every context frame the targets need. With ``noise`` given (and
    ``probe_stride`` > 0), every ``probe_stride``-th frame (by absolute index, ``targets +
    frame_base``) is also predicted from inputs perturbed by their own noise, and the
    propagated noise variance is averaged over a space-time window. For a network with plane
    context, ``plane_photons`` ``(len(photons), N, Y, X)`` holds the same frames of the
    neighbouring ``planes``. ``photons`` may be a window ``region`` of the frames (``mean_image``
    must then give that window too). ``out`` (frames ``targets``) is filled where given.
    ``targets`` must be consecutive when probed; ``average=False`` keeps the probes
    (``probes``) without averaging them into ``propagated``. ``coupling`` gathers, from the
    probes, what the mean image passes of a frame's noise to other frames' priors.
    """
    k = config.model.context_frames
    inf = config.inference
    # Filled batch by batch (lists of batches joined at the end would hold everything twice).
    filled = out is not None
    if out is None:
        out = PriorPrediction(*(torch.empty(0, device=device) for _ in range(3)))
    stride = inf.probe_stride if noise is not None else 0
    probes = Probes(int(targets[0]) + frame_base if len(targets) else frame_base, [], [], [])
    h, w = photons.shape[1:]
    tile_pixels = min(h, inf.tile_size) * min(w, inf.tile_size)
    batch = max(1, min(inf.batch_frames, _BATCH_PIXELS // tile_pixels))

    def run(m: torch.Tensor, f: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Always ``size`` frames per call (a short batch padded with copies of its last
        # frame): convolutions round differently for other batch sizes, and a frame's
        # prediction must be the same to the bit whichever chunk it falls in (bins of the
        # calibration would otherwise amplify the last bit into a different interval).
        n = m.shape[0]
        if n < size:
            m = torch.cat([m, m[-1:].expand(size - n, -1, -1, -1)])
            f = torch.cat([f, f[-1:].expand(size - n, -1, -1, -1)])
        loc, scale = predict_tiled(net, m, f, tile=inf.tile_size, overlap=inf.tile_overlap)
        return loc[:n], scale[:n]

    for i in range(0, len(targets), batch):
        ts = targets[i : i + batch]
        ctx = context_indices(ts, k, n_frames) - offset
        own = photons[ts - offset]
        mean = mean_image.images(ts, own_frames=own)
        frames_t = torch.from_numpy(np.ascontiguousarray(photons[ctx])).to(device) / scale0
        mean_t = torch.from_numpy(mean[:, None]).to(device) / scale0
        plane_sd = None
        if planes is not None:
            assert plane_photons is not None
            level = planes.mean_images_at(ts + frame_base, region)
            deviation = plane_photons[ts - offset] - level
            deviation_t = torch.from_numpy(np.ascontiguousarray(deviation)).to(device) / scale0
            frames_t = torch.cat([frames_t, deviation_t], dim=1)
            if stride:
                plane_sd = planes.noise_sd(torch.from_numpy(level).to(device))
        loc, scale = run(mean_t, frames_t, batch)
        if i == 0 and not filled:
            out = PriorPrediction(
                *(loc.new_empty((len(targets), *loc.shape[2:])) for _ in range(3))
            )
        batch_rows = slice(i, i + len(ts))
        torch.mul(loc[:, 0], scale0, out=out.loc[batch_rows])
        torch.mul(mean_t[:, 0], scale0, out=out.mean[batch_rows])
        torch.mul(scale[:, 0], scale0, out=out.var[batch_rows]).square_()
        if not stride:
            continue
        sel = np.flatnonzero(probe_frames(ts, stride, start=frame_base))
        if sel.size:
            assert noise is not None
            factor = torch.from_numpy(mean_image.noise_factor(ts[sel])).to(device)
            frame_sd, mean_sd = input_noise_sd(mean_t[sel] * scale0, noise, factor)
            z = torch.stack(
                [
                    frame_noise(
                        (frames_t.shape[1] + 1, h, w),
                        int(t) + frame_base,
                        config.train.seed,
                        noise.neighbour_correlation,
                    )
                    for t in ts[sel]
                ]
            ).to(device)
            if plane_sd is not None:  # each neighbouring plane's noise, at its own level
                n_ctx = 2 * k
                frame_sd = torch.cat([frame_sd.expand(-1, n_ctx, -1, -1), plane_sd[sel]], dim=1)
            m2 = mean_t[sel] + EPS * mean_sd * z[:, :1] / scale0
            f2 = frames_t[sel] + EPS * frame_sd * z[:, 1:] / scale0
            loc2 = torch.cat([run(m2[j : j + 1], f2[j : j + 1], 1)[0] for j in range(len(sel))])
            response = (loc2[:, 0] - loc[sel, 0]) * (scale0 / EPS)
            if coupling is not None:
                coupling.add((mean_sd * z[:, :1])[:, 0], response)
            prop = response**2
            probes.frames.extend(int(t) + frame_base for t in ts[sel])
            probes.sums.extend(window_sum(prop, 1, WINDOW[1]))
            probes.totals.extend(float(v) for v in prop.double().sum(dim=(1, 2)))
    if stride:
        out.probes = probes
        if average:
            out.propagated = _average_probes(probes, probes.start, len(targets), (h, w), device)
    return out


def _average_probes(
    probes: Probes,
    start: int,
    n_frames: int,
    shape: tuple[int, int],
    device: torch.device,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Propagated variance of frames ``start..start + n_frames`` (absolute), from ``probes``.

    ``rows=(a, b)``: only rows ``a..b`` of the frames (``shape`` is the whole frame's).

    Each frame gets the mean of the probes over a :data:`WINDOW` around it, among the
    ``probes`` of the run (which must cover those frames and no others). Each frame's sum over
    the window's frames is added up frame by frame (no running sum over the run, so the
    result does not depend on where a run starts, and no temporaries the size of the run).
    A frame with no probed frame in its window (a run shorter than the stride) gets the
    run's average over its probed pixels.
    """
    half = WINDOW[0] // 2
    positions = np.asarray(probes.frames, dtype=np.int64)
    h, w = shape
    a, b = rows if rows is not None else (0, h)
    pixels = window_count((1, h, w), 1, WINDOW[1], device)[0, a:b]  # in-bounds pixels per window
    out = torch.empty((n_frames, b - a, w), device=device)
    fallback = sum(probes.totals) / max(len(positions) * h * w, 1)
    for i in range(n_frames):
        t = start + i
        lo, hi = np.searchsorted(positions, [t - half, t + half + 1])
        if hi > lo:
            total = probes.sums[lo][a:b].clone()
            for j in range(lo + 1, hi):
                total += probes.sums[j][a:b]
            torch.div(total, pixels * float(hi - lo), out=out[i])
            continue
        out[i] = fallback
    return out


def _guard_and_correct_reach(
    gcfg: GuardConfig, correction: ResidualCorrection | None, average_frames: int
) -> int:
    """Frames on each side of its output that :func:`_guard_and_correct` reads (at most).

    The variance average's, the correction's and the guard's windows, one around the other,
    and the frame on each side that :func:`~calmdown.calibration.timing_variance` reads.
    """
    reach = correction.halo if correction is not None and gcfg.correction else 0
    return average_frames // 2 + reach + guard_halo(gcfg) + 1


def _guard_and_correct(
    x: torch.Tensor,
    loc: torch.Tensor,
    pvar: torch.Tensor,
    noise: NoiseModel,
    gcfg: GuardConfig,
    *,
    null_scale: float | Sequence[float],
    correction: ResidualCorrection | None,
    final: CalibrationStages | None = None,
    level: torch.Tensor | None = None,
    change: torch.Tensor | None = None,
    frames: slice | None = None,
    average_frames: int = 1,
    timing: float | None = None,
    untested: torch.Tensor | None = None,
) -> GuardOutput:
    """Apply the surprise guard, the fitted correction and the final variance calibration.

    Returns the guarded prior of ``frames`` (default: all frames of ``x``): its location,
    variance, surprise probability and components; the frames around them that the windows
    reach must be in ``x``.
    Each step computes only what the next one reads: the guard the frames the correction's
    windows reach, the correction and the final stages the frames asked for. ``final``
    needs ``level``, the mean image the network was given; ``change`` is
    :func:`temporal_change` of ``x`` where the caller has it already. ``timing`` weighs the
    :func:`~calmdown.calibration.timing_variance` of the network's ``loc`` added to the
    prior's variance after the correction; the stages scale it and bin by the rest (by the
    whole in a format 10 model); by default ``final.timing``, the weight they were fitted with
    (0 without ``final``).

    ``untested`` is prior variance the guard and the correction do not test the data
    against, added after them: the departure's (:mod:`calmdown.departure`), which stands for
    "the departure may have been real", the guard's own alternative. Counted in the guard's
    z-scores it shrinks them most where the prior departs, which is where an event it half
    saw stands (a synthetic one in the tests: surprise probability 1.0 without it, 0.04-0.16
    with it).
    """
    if timing is None:
        timing = final.timing if final is not None else 0.0
    n = x.shape[0]
    f0, f1, _ = (frames or slice(None)).indices(n)
    # The final prior variance is averaged over ``average_frames`` (after the stages), so it
    # is computed on the frames that average reaches.
    half = average_frames // 2 if final is not None else 0
    out0, out1 = f0, f1
    f0, f1 = max(0, f0 - half), min(n, f1 + half)
    correction = correction if gcfg.correction else None
    reach = correction.halo if correction is not None else 0
    g0, g1 = max(0, f0 - reach), min(n, f1 + reach)
    # The guard reads the frames its windows reach around those, and no others.
    r0, r1 = max(0, g0 - guard_halo(gcfg)), min(n, g1 + guard_halo(gcfg))
    guarded = surprise_guard(
        x[r0:r1],
        loc[r0:r1],
        pvar[r0:r1],
        noise.pixel_variance_photons(loc[r0:r1]),
        gcfg,
        null_scale=null_scale,
        frames=slice(g0 - r0, g1 - r0),
        noise_correlation=noise.neighbour_correlation,
    )
    loc_g, p_surprise = guarded.loc, guarded.p_surprise
    # The variance has two parts. The prior's (the network's, calibrated) is what the
    # correction's factors and the final stages are fitted to, on pixels where the prior is in
    # charge (p_surprise < _FIT_MAX_SURPRISE). The guard's (what the neighbouring frames leave
    # uncertain where it acts) is measured from the data and is not theirs to scale: fitted
    # where it is absent, a factor below 1 would narrow the interval of an event.
    prior_var = pvar[g0:g1]
    if correction is not None:
        shift, factor, added, _ = correction.terms(
            x[g0:g1], loc_g, guarded.var, noise.pixel_variance_photons(loc_g)
        )
        loc_g = loc_g + shift
        prior_var = factor * prior_var + added
        del shift, factor, added
    if untested is not None:
        prior_var = prior_var + untested[g0:g1]
    inner = slice(f0 - g0, f1 - g0)
    loc_g, prior_var, p_surprise = loc_g[inner], prior_var[inner], p_surprise[inner]
    timing_var = timing_variance(loc, slice(f0, f1), timing) if timing else None
    if timing_var is not None and (final is None or final.timing_binned):
        prior_var, timing_var = prior_var + timing_var, None
    if final is not None:
        assert level is not None
        if change is None:  # of the frames the change's windows reach around f0..f1
            c0, c1 = max(0, f0 - CHANGE_FRAMES), min(n, f1 + CHANGE_FRAMES)
            change = temporal_change(x[c0:c1])[f0 - c0 : f1 - c0]
        else:
            change = change[f0:f1]
        prior_var = final.apply(prior_var, loc_g, level[f0:f1], change, unbinned=timing_var)
        if half:
            prior_var = average_in_time(prior_var, average_frames)
    keep = slice(out0 - f0, out1 - f0)
    guard_var = guarded.guard_var[inner][keep]
    return GuardOutput(
        loc_g[keep],
        prior_var[keep] + guard_var,
        p_surprise[keep],
        guard_var,
        guarded.shift[inner][keep],
        guarded.slab_var[inner][keep],
    )


def _correction_windows(gcfg: GuardConfig, noise: NoiseModel) -> dict[str, Any]:
    core = 1 if noise.variance_ratio > 0.95 else 5
    pixels = max(gcfg.correction_pixels, core + 2)
    return {
        "evidence": (gcfg.correction_frames, pixels),
        "local": (1, pixels),
        "core": core,
    }


_FIT_MAX_SURPRISE = 0.01
"""Pixels whose surprise probability exceeds this are left out of the fits of the prior's
variance (the correction's and the final stages')."""

_STAGE_FEATURES = ("change", "activity", "deviation")
"""Features of the final calibration stages, fitted in this order."""

_CALIBRATION_PIXELS = 8_000_000
"""Pixels (frames x pixels per frame) the calibration is fitted on, at least, where available."""

_STRETCH_PIXELS = 2_000_000
"""Size of one run of trained-on frames predicted for the calibration."""

_HELDOUT_PIXELS = 16_000_000
"""Most pixels (frames, margins included, x pixels per frame) of the held-out runs that the
calibration predicts and holds in memory; beyond that each run is cropped to a random window
instead, so the memory stops growing with the movie's length (a 128 x 128 movie's runs fit
whole up to about 2000 frames). 64 million held 3.3 GB at 128 x 128 x 4000, 16 million 2.5 GB,
with the same held-out coverage (0.926)."""

_WINDOW_SIDE = 128
"""Side of the calibration windows of frames larger than :data:`_WINDOW_SIDE` squared (the
trained-on runs added to the held-out ones would otherwise be whole frames)."""

_CROP_MARGIN = 32
"""Pixels predicted around a calibration window and then dropped, so that the network sees
the window's surroundings as it does in a whole frame."""


def _crop_windows(
    h: int, w: int, n_pixels: int, rng: np.random.Generator
) -> Callable[[], tuple[tuple[slice, slice], tuple[slice, slice]]] | None:
    """Return a function drawing calibration windows, or None when whole frames fit.

    ``n_pixels``: frames to predict times pixels per frame. Each window is a random square
    whose side keeps the total within :data:`_HELDOUT_PIXELS`, and at most
    :data:`_WINDOW_SIDE` in frames larger than that; the function returns the region
    to predict (the window and a margin, within the frame) and the window within that region.
    """
    large = h * w > _WINDOW_SIDE**2
    if n_pixels <= _HELDOUT_PIXELS and not large:
        return None
    side = int(np.sqrt(_HELDOUT_PIXELS * h * w / n_pixels)) // 8 * 8
    if large:
        side = min(side, _WINDOW_SIDE)
    sy, sx = min(max(side, 64), h), min(max(side, 64), w)

    def draw() -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        y0, x0 = int(rng.integers(0, h - sy + 1)), int(rng.integers(0, w - sx + 1))
        py0, px0 = max(0, y0 - _CROP_MARGIN), max(0, x0 - _CROP_MARGIN)
        py1, px1 = min(h, y0 + sy + _CROP_MARGIN), min(w, x0 + sx + _CROP_MARGIN)
        return (
            (slice(py0, py1), slice(px0, px1)),
            (slice(y0 - py0, y0 - py0 + sy), slice(x0 - px0, x0 - px0 + sx)),
        )

    return draw


def _target_pixels(
    x: torch.Tensor, target: torch.Tensor, noise: NoiseModel, loc: torch.Tensor
) -> torch.Tensor:
    """Mask of the values of a run to fit on: its target frames, where a value was measured.

    A (T,) frame mask where the recording has no clip bounds (indexing with it gives the same
    values in the same order as the (T, Y, X) mask would), else (T, Y, X) without the values
    at the saturation ceiling or whose prior location ``loc`` is near it, where the noise is
    cut off (:meth:`~calmdown.noise.NoiseModel.measured`). Chosen by the prior, which does not
    see the value, the rest are no biased sample.
    """
    if not noise.clips:
        return target
    return target[:, None, None] & noise.measured(x, loc)


def _measured_residual(x: torch.Tensor, loc: torch.Tensor, noise: NoiseModel) -> torch.Tensor:
    """``x - loc``, 0 where ``x`` is clipped (no measurement of the error's size there)."""
    resid = x - loc
    return torch.where(noise.measured(x, loc), resid, 0.0) if noise.clips else resid


def _memorisation_check(
    heldout: list[tuple[torch.Tensor, ...]],
    trained: list[tuple[torch.Tensor, ...]],
    noise: NoiseModel,
) -> dict[str, Any]:
    """Compare the prior's residual excess over noise on held-out and on trained-on frames.

    A network that memorised the noise of its training targets fits them better than frames it
    never trained on. The excess ``(x - loc)^2 - noise var`` relative to the predicted variance
    is compared; trained-on frames are used only if theirs is not significantly (2 sd) smaller.
    Each ratio's standard error is the larger of the detector noise's share and a jackknife
    over the runs of frames (the prior's own error differs from run to run: a run with a
    burst of activity has more).
    """

    def sums(part: tuple[torch.Tensor, ...]) -> np.ndarray:
        x, loc, pvar, target, prop, _ = part
        target = _target_pixels(x, target, noise, loc)
        raw_nv = noise.raw_variance_photons(x)[target].double()
        return np.array(
            [
                float((((x - loc) ** 2)[target].double() - raw_nv).sum()),
                float((pvar + prop)[target].double().sum()),
                float((raw_nv**2).sum()),
            ]
        )

    def ratio(parts: list[tuple[torch.Tensor, ...]]) -> tuple[float, float]:
        each = np.array([sums(part) for part in parts])
        excess, var, nv2 = each.sum(axis=0)
        r = excess / max(var, 1e-12)
        se = float(np.sqrt(2 * nv2)) / max(var, 1e-12)
        k = len(each)
        if k > 1:
            rest = each.sum(axis=0)[None] - each
            loo = rest[:, 0] / np.maximum(rest[:, 1], 1e-12)
            se = max(se, float(np.sqrt((k - 1) / k * np.sum((loo - loo.mean()) ** 2))))
        return float(r), float(se)

    if not trained:
        return {"memorised": False, "trained_frames_used": 0}
    r_held, se_held = ratio(heldout)
    r_trained, se_trained = ratio(trained)
    memorised = r_trained < r_held - 2 * float(np.hypot(se_held, se_trained))
    if memorised:
        logger.warning(
            "the network fits the frames it trained on better than held-out ones (residual "
            "excess %.3g vs %.3g of the predicted variance): calibrating on held-out frames "
            "only, which are few here, so the intervals are less certain",
            r_trained,
            r_held,
        )
    return {
        "memorised": bool(memorised),
        "excess_ratio_heldout": r_held,
        "excess_ratio_heldout_se": se_held,
        "excess_ratio_trained": r_trained,
        "excess_ratio_trained_se": se_trained,
        "trained_frames_used": 0 if memorised else sum(int(p[3].sum()) for p in trained),
    }


@dataclass
class _Calibration:
    """Everything :func:`_calibrate` fits on held-out frames."""

    calibration: ScaleCalibration
    guard_null_scales: tuple[float, ...]
    correction: ResidualCorrection | None
    final_calibration: CalibrationStages
    error_correlation: ErrorCorrelation
    heldout: dict[str, Any]
    departure: DepartureVariance


def _fitted_pixels(
    x: torch.Tensor,
    loc: torch.Tensor,
    var: torch.Tensor,
    raw_nv: torch.Tensor,
    level: torch.Tensor,
    fit: torch.Tensor,
    change: torch.Tensor,
    *,
    unbinned: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Keep a run's part of the final stages' fit at the pixels fitted on (1-D tensors).

    The stages' features and sums are elementwise, so the fit is the same as on the whole
    run; the frames that only serve as neighbours and the pixels the guard took are dropped.
    ``unbinned`` is the variance the stages scale but do not bin by (see
    :func:`fit_stratified_calibration`).
    """
    level = torch.broadcast_to(level, x.shape)
    kept = tuple(a[fit] for a in (x, loc, var, raw_nv, level, change, unbinned))
    x, loc, var, raw_nv, level, change, unbinned = kept
    return (x, loc, var, raw_nv, level, torch.ones_like(x, dtype=torch.bool), change, unbinned)


def _guard_null_scales(
    parts: list[tuple[torch.Tensor, ...]], noise: NoiseModel, gcfg: GuardConfig
) -> list[float]:
    """Null scale of each of the guard's window statistics on the target frames of ``parts``.

    Robust (a median absolute deviation): the few windows that hold an event must not set
    it. ``parts`` hold ``(x, loc, prior variance, target, ...)`` per run, after calibration.
    One window at a time, so that only its z-scores are held (all windows' were ~200 MB).
    """
    null_scale = []
    for window in evidence_windows(gcfg):
        zs = []
        for x, loc, pvar, target, *_ in parts:
            var = pvar + noise.pixel_variance_photons(loc)
            (z,) = evidence_zscores(
                x - loc, var, gcfg, [window], noise_correlation=noise.neighbour_correlation
            )
            zs.append(z[_target_pixels(x, target, noise, loc)].flatten().cpu().numpy())
            del z, var
        zall = np.concatenate(zs)
        del zs
        null_scale.append(float(max(1.0, 1.4826 * np.median(np.abs(zall - np.median(zall))))))
    return null_scale


def _calibrate(
    net: InferenceNetwork,
    segments: list[Segment],
    mean_image: MeanImage,
    noise: NoiseModel,
    scale0: float,
    config: Config,
    device: torch.device,
    planes: NeighbourPlanes | None = None,
) -> _Calibration:
    """Fit, on held-out runs of frames, everything that sits on top of the network.

    The prior-variance calibration, the guard's null scale, the residual correction and the
    final stratified variance calibration are fitted on half of the runs; the predictive check
    of raw values uses the other half. Each run is predicted with a margin of neighbouring
    frames, which only serve as neighbours.
    """
    gcfg = config.inference.guard
    windows = _correction_windows(gcfg, noise)
    margin = (
        guard_halo(gcfg)
        + probe_halo(config.inference.probe_stride)
        + max(windows["evidence"][0], 1) // 2
        + CHANGE_FRAMES
        + config.inference.variance_frames // 2
    )
    runs: list[tuple[Segment, np.ndarray]] = []
    for seg in segments:
        local = np.arange(seg.photons.shape[0])
        held = local[
            held_out_mask(seg.start + local, config.train.val_fraction, mean_image.n_frames)
        ]
        if held.size == 0:
            continue
        breaks = np.flatnonzero(np.diff(held) > 1) + 1
        runs.extend((seg, run) for run in np.split(held, breaks))
    rng = np.random.default_rng(config.train.seed + 2)
    order = rng.permutation(len(runs))[:40]
    fit_parts: list[tuple[torch.Tensor, ...]] = []
    check_parts: list[tuple[torch.Tensor, ...]] = []
    h, w = segments[0].photons.shape[1:]

    def span(seg: Segment, run: np.ndarray) -> np.ndarray:
        return np.arange(max(0, run[0] - margin), min(seg.photons.shape[0], run[-1] + 1 + margin))

    # Large frames: each run is predicted in a random window, so memory and time stay bounded.
    n_pixels = sum(len(span(*runs[i])) for i in order) * h * w
    draw_window = _crop_windows(h, w, n_pixels, rng)

    coupling = MeanNoiseCoupling()

    def part(seg: Segment, frames: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, ...]:
        region, keep = draw_window() if draw_window else ((slice(None),) * 2, (slice(None),) * 2)
        photons = seg.photons[:, region[0], region[1]]
        pred = _predict_prior(
            net,
            photons,
            0,
            seg.photons.shape[0],
            frames,
            _SegmentMean(mean_image, seg.start, region),
            scale0=scale0,
            config=config,
            device=device,
            noise=noise,
            frame_base=seg.start,
            planes=planes,
            plane_photons=None if seg.planes is None else seg.planes[:, :, region[0], region[1]],
            region=region,
            coupling=coupling,
        )
        x = torch.from_numpy(np.ascontiguousarray(photons[frames])).to(device)
        prop = pred.propagated if pred.propagated is not None else torch.zeros_like(pred.loc)
        inner = (slice(None), keep[0], keep[1])
        x, loc, var, prop, mean = (
            a[inner].contiguous() for a in (x, pred.loc, pred.var, prop, pred.mean)
        )
        return (x, loc, var, torch.from_numpy(target).to(device), prop, mean)

    for j, i in enumerate(order):
        seg, run = runs[i]
        frames = span(seg, run)
        (fit_parts if j % 2 == 0 else check_parts).append(part(seg, frames, np.isin(frames, run)))
    if not check_parts:
        check_parts = fit_parts
    # Held-out frames of a short or small movie hold too few pixels to measure an error
    # variance that is ~1 % of the noise's: add frames the network trained on (it never saw
    # a frame's own value when predicting it, so their residuals are honest unless it
    # memorised noise, which the check below would show).
    window_pixels = fit_parts[0][0].shape[1] * fit_parts[0][0].shape[2]
    fit_pixels = sum(int(p[3].sum()) for p in fit_parts) * window_pixels
    trained_parts = []
    length = int(np.clip(_STRETCH_PIXELS // window_pixels, 2 * margin + 16, 256))
    length = min(length, max(seg.photons.shape[0] for seg in segments))  # a short movie
    slots = [
        (seg, a) for seg in segments for a in range(0, seg.photons.shape[0] - length + 1, length)
    ]
    for i in rng.permutation(len(slots)):
        if fit_pixels >= _CALIBRATION_PIXELS:
            break
        seg, a = slots[i]
        frames = np.arange(a, a + length)
        inner = (frames >= a + margin) & (frames < a + length - margin)
        held = held_out_mask(seg.start + frames, config.train.val_fraction, mean_image.n_frames)
        target = inner & ~held
        if target.any():
            trained_parts.append(part(seg, frames, target))
            fit_pixels += int(target.sum()) * window_pixels
    heldout_parts = fit_parts + ([] if check_parts is fit_parts else check_parts)
    memorised = _memorisation_check(heldout_parts, trained_parts, noise)
    del heldout_parts  # (and trained_parts below): each run is then held by the lists it is in
    if not memorised["memorised"]:
        fit_parts = fit_parts + trained_parts
    del trained_parts
    # The variance of the prior's departure from the mean image that the held-out values
    # doubt: known, as the propagated noise is, and not tested by the guard (see
    # _guard_and_correct). Computed where it is used, run by run (held for every run, it
    # would add a tensor per run to the calibration's peak memory).
    departure = fit_departure([(p[0], p[1], p[5], p[3]) for p in fit_parts])

    def doubt(loc: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        extra = departure.apply(loc, mean)
        return torch.zeros_like(loc) if extra is None else extra

    def targets(
        parts: list[tuple[torch.Tensor, ...]],
        value: Callable[[tuple[torch.Tensor, ...]], torch.Tensor],
    ) -> np.ndarray:
        return (
            torch.cat([value(p)[_target_pixels(p[0], p[3], noise, p[1])].flatten() for p in parts])
            .cpu()
            .numpy()
        )

    x_f, loc_f, pvar_f = (targets(fit_parts, lambda p, k=k: p[k]) for k in (0, 1, 2))
    known_f = targets(fit_parts, lambda p: p[4] + doubt(p[1], p[5]))
    # The noise variance of each raw value, from the raw value itself: linear in the level,
    # so unbiased whatever the prior's bias (the prior's location would not be).
    calib = fit_scale_calibration(
        pvar_f,
        (x_f - loc_f) ** 2,
        noise.raw_variance_photons(x_f),
        known_var=known_f,
        n_bins=5,
    )
    # Each fit below leaves its temporaries in the heap (large_arrays); handed back between
    # fits, they do not stack up on the held-out runs.
    del x_f, loc_f, pvar_f, known_f
    # From here on, each run's prior variance is one tensor: the calibrated network's plus the
    # propagated noise's (runs the fit and the check share stay shared).
    folded: dict[int, tuple[torch.Tensor, ...]] = {}
    for x, loc, pvar, target, prop, mean in (*fit_parts, *check_parts):
        if id(pvar) not in folded:
            folded[id(pvar)] = (x, loc, calib.apply(pvar).add_(prop), target, mean)
    fit_parts = [folded[id(p[2])] for p in fit_parts]
    check_parts = [folded[id(p[2])] for p in check_parts]
    del folded, x, loc, pvar, target, prop, mean
    release_freed_memory()
    null_scale = _guard_null_scales(fit_parts, noise, gcfg)
    release_freed_memory()

    def guarded(
        parts: list[tuple[torch.Tensor, ...]],
        corr: ResidualCorrection | None,
        final: CalibrationStages | None = None,
        timing: float | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        # The guarded runs' tensors, each with its GuardOutput. One run at a time: each
        # consumer keeps only what it fits on, so the guard's outputs for all runs are never
        # held at once (the calibration's peak memory).
        for x, loc, pvar, target, mean in parts:
            change = temporal_change(x)
            g = _guard_and_correct(
                x,
                loc,
                pvar,
                noise,
                gcfg,
                null_scale=null_scale,
                correction=corr,
                final=final,
                level=mean,
                change=change,
                average_frames=config.inference.variance_frames,
                timing=timing,
                untested=doubt(loc, mean),
            )
            loc_g, var_g, p_surprise = g.loc, g.var, g.p_surprise
            raw_nv = noise.raw_variance_photons(x)
            # The prior's variance is fitted where the prior is in charge. Where the guard
            # acts, its own (wide) part of the variance dominates; in a ratio of sums it would
            # drag down the factors of every other pixel in the same group.
            fit = target[:, None, None] & (p_surprise < _FIT_MAX_SURPRISE)
            if noise.clips:
                fit &= noise.measured(x, loc_g)
            nv = noise.pixel_variance_photons(loc_g)
            release_freed_memory()  # the guard's temporaries, before the consumer's
            yield (x, loc_g, var_g, nv, fit, raw_nv, mean, change, target, g)

    error_correlation = estimate_error_correlation(
        (  # one run at a time: each run's residual and variances are freed after it
            (
                _measured_residual(x, loc, noise),
                pvar + doubt(loc, mean),
                noise.pixel_variance_photons(loc),
                target,
            )
            for x, loc, pvar, target, mean in fit_parts
        ),
        noise_correlation=noise.neighbour_correlation,
        context_frames=config.model.context_frames,
        mean_coupling=coupling.grid(),
    )
    release_freed_memory()
    correction = None
    if gcfg.correction:
        correction = fit_correction(guarded(fit_parts, None), **windows)
        release_freed_memory()
    # Stages, each by brightness x one feature (_STAGE_FEATURES): how fast the data change, then
    # how far the prior departs from the mean image (each alone leaves the other's groups off by
    # 10-20 %), in its own spread and in the mean image's shot noise.
    # The stages scale the prior's variance (the guard's is added after them): they are fitted
    # to it, at the no-surprise component's location, where that component is in charge. They
    # scale the timing term with it but bin by the rest (CalibrationStages.timing_binned says
    # why).
    stage_parts = [
        _fitted_pixels(
            x,
            *g.components()[:2],
            raw_nv,
            mean,
            fit,
            change,
            unbinned=timing_variance(part[1], slice(None), TIMING_WEIGHT),
        )
        for part, (x, _, _, _, fit, raw_nv, mean, change, _, g) in zip(
            fit_parts, guarded(fit_parts, correction), strict=True
        )
    ]
    resolution = calibration_resolution(stage_parts)
    stages = []
    for feature in _STAGE_FEATURES:
        stage = fit_stratified_calibration(stage_parts, feature=feature)
        stages.append(stage)
        stage_parts = [staged_part(stage, part) for part in stage_parts]
    stages.append(fit_level_stage(stage_parts))
    stratified = CalibrationStages(stages, timing=TIMING_WEIGHT)
    del stage_parts
    release_freed_memory()
    # Held-out raw values under the model that makes the intervals: the guarded prior's two
    # components, each with the noise. At a few photons the counts are whole numbers, and a
    # continuous predictive's PIT of them is far from uniform however right the model (KS
    # 0.16-0.18 at 0.5 photons): each value is spread uniformly over its photon (+-0.5, and
    # 1/12 more variance), which a right model's PIT then leaves uniform.
    dither = torch.Generator().manual_seed(config.train.seed + 3)
    pits = []
    for x, *_, target, g in guarded(check_parts, correction, stratified):
        spread = torch.rand(x.shape, generator=dither, dtype=x.dtype).to(x.device) - 0.5
        pit = predictive_pit(
            x + spread, g, lambda level: noise.pixel_variance_photons(level) + 1 / 12
        )
        pits.append(pit[_target_pixels(x, target, noise, g.loc)])
    check = predictive_check(torch.cat(pits).cpu().numpy())
    check["memorisation"] = memorised
    check.update(resolution)
    return _Calibration(
        calib, tuple(null_scale), correction, stratified, error_correlation, check, departure
    )


def _check_plane_context(config: Config, prep: Prepared) -> None:
    """Refuse a network with plane context without the planes, and planes without one."""
    wanted, given = config.model.plane_context, prep.planes is not None
    if wanted and not given:
        raise InputError(
            "this model takes the neighbouring planes of a volume recording as context; give "
            "them (--plane-context with --plane on the command line, neighbours= in Python)",
            path=prep.reader.path,
        )
    if given and not wanted:
        raise InputError(
            "neighbouring planes were given, but the model was trained without them; train "
            "with plane context (--plane-context, plane_context=True) or leave them out",
            path=prep.reader.path,
        )


class _SegmentMean:
    """A MeanImage seen through a segment's local frame numbering (and a window of it)."""

    def __init__(
        self,
        mean_image: MeanImage,
        start: int,
        region: tuple[slice, slice] = (slice(None), slice(None)),
    ) -> None:
        self.mean_image = mean_image
        self.start = start
        self.region = region

    @property
    def n_frames(self) -> int:
        return self.mean_image.n_frames

    def images(self, t: np.ndarray, own_frames: np.ndarray | None = None) -> np.ndarray:
        return self.mean_image.images(
            np.asarray(t) + self.start, own_frames=own_frames, region=self.region
        )

    def noise_factor(self, t: np.ndarray) -> np.ndarray:
        return self.mean_image.noise_factor(np.asarray(t) + self.start, region=self.region)


# -- public API ----------------------------------------------------------------------------


def train(
    movie: MovieLike,
    *,
    config: Config | None = None,
    key: str | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    prepared: Prepared | None = None,
    checkpoint: Checkpoint | str | os.PathLike[str] | None = None,
    neighbours: Sequence[MovieLike] | None = None,
    init: TrainedModel | str | os.PathLike[str] | None = None,
    **options: Any,
) -> TrainedModel:
    """Train the context network on a movie (self-supervised).

    Parameters
    ----------
    movie : ndarray, path or MovieReader
        (T, Y, X) movie, any integer or float dtype, in the detector's units (ADU).
    config : Config, optional
        Settings; ``**options`` override single fields (see :func:`calmdown.make_config`).
    key : str, optional
        Dataset inside an HDF5 or Zarr file.
    progress : callable, optional
        Called with a :class:`~calmdown.train.TrainProgress` after every held-out evaluation,
        and once more (``phase="calibrating"``) when the calibration on held-out frames begins.
    prepared : Prepared, optional
        A first pass already made by :func:`prepare`.
    checkpoint : Checkpoint or path, optional
        Write training checkpoints there (every ~30 s, at the end and on interrupt), and with
        ``Checkpoint(path, resume=True)`` continue from one (see :mod:`calmdown.checkpoint`).
        A plain path starts over. Removed on success unless ``remove_when_done=False``.
    neighbours : sequence of ndarray, path or MovieReader, optional
        The planes above and below of a volume recording (at its top or bottom, the one
        neighbour twice), same shape as ``movie``: the network then also sees them at frame
        t (plane context, see :mod:`calmdown.neighbours`), and applying it needs them too.
    init : TrainedModel or path, optional
        Fine-tune: start from this model's network (trained on another recording, e.g. an
        earlier session of the same preparation) instead of random weights. Its network
        settings (:data:`NETWORK_FIELDS`) are taken over; everything else (noise model, mean
        image, calibration) is fitted on ``movie`` afresh. See :func:`adopt_network`.
    **options
        Flat overrides, e.g. ``time_budget_s=60``, ``gain=2.0``, ``seed=1``.

    Returns
    -------
    TrainedModel

    Raises
    ------
    InputError
        If ``init`` asks for another network than the options do.
    ModelFileError
        If ``init`` is a path that is not a readable model file.
    """
    start = _init_model(init)
    cfg = _run_config(config, options, neighbours, prepared, start)
    _set_threads(cfg)
    device = resolve_device(cfg.device)
    ckpt = Checkpoint.coerce(checkpoint)
    prep = prepared or prepare(movie, cfg, key=key, neighbours=neighbours)
    try:
        model = _train(prep, cfg, device, progress, checkpoint=ckpt, init=start)
    finally:
        if prepared is None:
            prep.close()
    if ckpt is not None and ckpt.remove_when_done:
        ckpt.remove()
    return model


NETWORK_FIELDS = ("context_frames", "use_mean_image", "plane_context", "width")
"""Settings of :class:`~calmdown.config.ModelConfig` that shape the network's weights: a model
to fine-tune from fixes them."""


def _init_model(init: TrainedModel | str | os.PathLike[str] | None) -> TrainedModel | None:
    """Return the model to start training from: as given, or read from its file."""
    if init is None or isinstance(init, TrainedModel):
        return init
    from calmdown.persist import load_model  # persist imports this module

    return load_model(init)


def _init_source(init: TrainedModel | None) -> str | None:
    """Return how the model file records where fine-tuning started."""
    if init is None:
        return None
    return init.path or f"a model in memory (trained on data {init.data_hash})"


def _run_config(
    config: Config | None,
    options: dict[str, Any],
    neighbours: Sequence[MovieLike] | None,
    prepared: Prepared | None,
    init: TrainedModel | None,
) -> Config:
    """Return the settings of a training run: options, the init model's network, planes."""
    cfg = make_config(config, **options)
    if init is not None:
        cfg = adopt_network(cfg, init, explicit=options)
    cfg = _with_plane_context(cfg, neighbours, prepared)
    if init is not None:
        adopt_network(cfg, init, explicit=cfg.model.model_dump())  # plane context agrees
    # Emulated bfloat16 asked for: refused before the movie is read (``denoise``).
    training_dtype(resolve_device(cfg.device), cfg.train.precision)
    return cfg


def adopt_network(
    cfg: Config, init: TrainedModel, *, explicit: dict[str, Any] | None = None
) -> Config:
    """Return ``cfg`` with the network settings of ``init``, the model to fine-tune from.

    Parameters
    ----------
    cfg : Config
        Settings of the run.
    init : TrainedModel
        The model whose network training starts from.
    explicit : dict, optional
        Options the user gave (flat names, ``None`` meaning not given). A network setting
        given there, or set away from its default in ``cfg``, must agree with ``init``'s.

    Returns
    -------
    Config
        A copy of ``cfg`` with :data:`NETWORK_FIELDS` as in ``init``.

    Raises
    ------
    InputError
        If a network setting asked for differs from ``init``'s; the message names it.
    """
    explicit = explicit or {}
    default = ModelConfig()
    own = init.config.model
    for name in NETWORK_FIELDS:
        asked = explicit.get(name)
        if asked is None and getattr(cfg.model, name) != getattr(default, name):
            asked = getattr(cfg.model, name)
        if asked is not None and asked != getattr(own, name):
            raise InputError(
                f"the model to start from was trained with {name}={getattr(own, name)}, and "
                f"this run asks for {name}={asked}: leave that option out to take the model's "
                "network, or train from scratch (without --init)"
            )
    return make_config(cfg, **{name: getattr(own, name) for name in NETWORK_FIELDS})


def _with_plane_context(
    cfg: Config, neighbours: Sequence[MovieLike] | None, prepared: Prepared | None
) -> Config:
    """Switch plane context on when neighbouring planes are given."""
    given = neighbours is not None or (prepared is not None and prepared.planes is not None)
    if given and not cfg.model.plane_context:
        return make_config(cfg, plane_context=True)
    return cfg


def make_trainer(
    prep: Prepared, cfg: Config, device: torch.device, init: TrainedModel | None = None
) -> Trainer:
    """Return a :class:`~calmdown.train.Trainer` on the training segments of a prepared movie.

    With ``init``, the network starts from that model's weights (see :func:`adopt_network`).
    """
    return Trainer(
        _training_segments(prep, cfg),
        prep.mean_image,
        prep.noise,
        float(max(np.mean(prep.mean_image.global_mean), 0.05)),
        model_config=cfg.model,
        train_config=cfg.train,
        device=device,
        planes=prep.planes,
        init_state=None if init is None else init.state_dict,
    )


def _train(
    prep: Prepared,
    cfg: Config,
    device: torch.device,
    progress: Callable[[TrainProgress], None] | None,
    *,
    checkpoint: Checkpoint | None = None,
    init: TrainedModel | None = None,
) -> TrainedModel:
    t0 = time.perf_counter()
    _check_plane_context(cfg, prep)
    trainer = make_trainer(prep, cfg, device, init)
    segments, scale0 = trainer.segments, trainer.scale0
    result = run_training(
        trainer, progress=progress, checkpoint=checkpoint, config=cfg, data_hash=_data_hash(prep)
    )
    if progress is not None:
        progress(
            TrainProgress(
                step=result.steps,
                max_steps=cfg.train.max_steps,
                seconds=result.seconds,
                train_loss=float("nan"),
                val_loss=result.best_val_loss,
                best_val_loss=result.best_val_loss,
                phase="calibrating",
            )
        )
    # Calibrated as inference will run the network (ONNX Runtime or PyTorch, see runtime.py).
    runner = inference_network(trainer.net.eval(), device, cfg.inference.runtime)
    with large_arrays():
        fitted = _calibrate(
            runner, segments, prep.mean_image, prep.noise, scale0, cfg, device, prep.planes
        )
    logger.info(
        "trained %d steps in %.1f s (%s); held-out 90%% raw-interval coverage %.3f",
        result.steps,
        result.seconds,
        result.stopped_because,
        fitted.heldout["coverage"],
    )
    return TrainedModel(
        config=cfg,
        noise=prep.noise,
        scale0=scale0,
        state_dict=result.state_dict,
        calibration=fitted.calibration,
        guard_null_scales=fitted.guard_null_scales,
        correction=fitted.correction,
        final_calibration=fitted.final_calibration,
        departure=fitted.departure,
        training={
            "steps": result.steps,
            "seconds": time.perf_counter() - t0,
            "loop_seconds": result.seconds,
            "best_val_loss": result.best_val_loss,
            "stopped_because": result.stopped_because,
            "recoveries": result.recoveries,
            "device": str(device),
            "precision": trainer.precision,
            "runtime": getattr(runner, "name", "torch"),
            "init": _init_source(init),
            "start_val_loss": trainer.start_val_loss,
        },
        heldout=fitted.heldout,
        data_hash=_data_hash(prep),
        error_correlation=fitted.error_correlation,
        _runtime=((device, cfg.inference.runtime), runner),
    )


def iter_apply(
    model: TrainedModel,
    movie: MovieLike,
    *,
    key: str | None = None,
    interval: float | None = None,
    prepared: Prepared | None = None,
    config: Config | None = None,
    frames: tuple[int, int] | None = None,
    samples: int = 0,
    sample_pixels: np.ndarray | None = None,
    neighbours: Sequence[MovieLike] | None = None,
    blank_frames: str = "pass",
    **options: Any,
) -> Iterator[DenoisedChunk]:
    """Denoise a movie chunk by chunk (memory does not grow with its length).

    Parameters
    ----------
    model : TrainedModel
        From :func:`train` or :func:`calmdown.persist.load_model`.
    movie : ndarray, path or MovieReader
        The movie to denoise; another recording of the same rig is fine.
    key : str, optional
        Dataset inside an HDF5 or Zarr file.
    interval : float, optional
        Also return the central credible interval at this level (e.g. 0.9).
    prepared : Prepared, optional
        First pass already made.
    config : Config, optional
        Inference settings (defaults: the model's); ``**options`` override fields.
    frames : (int, int), optional
        Only frames ``start..stop`` (the rest of the movie still serves as context); the
        result is the same as those frames of a whole-movie run.
    samples : int
        Also return this many joint Monte-Carlo samples of the clean movie per chunk (errors
        correlated across pixels and frames as the model's; seeded by the config's seed).
        Chunks then hold fewer frames so that the samples take at most about 512 MB.
    sample_pixels : ndarray, optional
        (Y, X) boolean mask: draw the samples at these pixels only (what ROI traces need);
        each chunk's ``samples`` is then (n_samples, n, P), the mask's pixels in row-major
        order, equal to those pixels of whole-frame samples. Far cheaper where the mask
        covers a small part of the frame, and chunks hold more frames.
    neighbours : sequence of ndarray, path or MovieReader, optional
        The neighbouring planes, for a model trained with them (see :func:`train`).
    blank_frames : {"pass", "drop"}
        Where the movie has blank frames (frames of one value; :func:`prepare` reads the
        movie without them and denoises the rest): ``"pass"`` numbers the chunks as the movie
        does and puts each blank frame, as it is, into every output (``p_surprise`` 0 there);
        ``"drop"`` numbers them as ``Prepared.reader`` does, without the blank frames
        (``frames`` is then in that numbering too).
    **options
        Flat overrides such as ``output="prior"`` or ``chunk_frames=64``.

    Yields
    ------
    DenoisedChunk
    """
    base = config or model.config
    if "chunk_pixels" not in options:
        options.update(chunk_options(options.get("chunk_frames")))
    cfg = make_config(base, **options)
    # The network's shape comes from the model, whatever the caller's config says.
    cfg = cfg.model_copy(update={"model": model.config.model})
    _set_threads(cfg)
    if interval is not None and not 0 < interval < 1:
        raise InputError(f"interval must be between 0 and 1 (e.g. 0.9), got {interval}")
    device = resolve_device(cfg.device)
    # A new movie gets its own noise model (the offset can differ between sessions).
    if blank_frames not in ("pass", "drop"):
        raise ValueError(f"blank_frames must be 'pass' or 'drop', got {blank_frames!r}")
    prep = prepared or prepare(movie, cfg, key=key, neighbours=neighbours)
    try:
        gaps = prep.blank if blank_frames == "pass" else None
        n = (prep.shape if gaps is not None else prep.reader.shape)[0]
        if frames is not None and not 0 <= frames[0] < frames[1] <= n:
            raise InputError(f"frames must be a range within 0..{n}, got {frames}")
        if samples < 0:
            raise InputError(f"samples must be 0 or more, got {samples}")
        h, w = prep.reader.shape[1:]
        chunk = cfg.inference.chunk_frames
        if cfg.inference.chunk_pixels is not None:
            chunk = min(chunk, max(1, cfg.inference.chunk_pixels // (h * w)))
        if sample_pixels is not None:
            sample_pixels = np.asarray(sample_pixels, dtype=bool)
            if sample_pixels.shape != (h, w):
                raise InputError(
                    f"sample_pixels has shape {sample_pixels.shape}, the frames {h} x {w}"
                )
        if samples:
            drawn = h * w if sample_pixels is None else max(1, int(sample_pixels.sum()))
            chunk = max(1, min(chunk, (1 << 27) // (samples * drawn)))
        cfg = make_config(cfg, chunk_frames=chunk)
        if gaps is None:
            yield from _apply_chunks(
                model, prep, cfg, device, interval, frames, samples, sample_pixels
            )
            return
        wanted = frames or (0, n)
        kept = gaps.to_kept(*wanted)
        chunks = (
            _apply_chunks(model, prep, cfg, device, interval, kept, samples, sample_pixels)
            if kept[1] > kept[0]
            else iter([_blank_chunk(kept[0], (h, w), interval, samples, sample_pixels)])
        )
        for chunk in chunks:
            yield _with_blank_frames(chunk, gaps, wanted)
    finally:
        if prepared is None:
            prep.close()


def _blank_chunk(
    at: int,
    shape: tuple[int, int],
    interval: float | None,
    samples: int,
    sample_pixels: np.ndarray | None,
) -> DenoisedChunk:
    """Return a chunk of no measured frame, before measured frame ``at`` (of those kept)."""
    drawn = shape if sample_pixels is None else (int(sample_pixels.sum()),)
    empty = np.empty((0, *shape), np.float32)
    return DenoisedChunk(
        at,
        at,
        empty,
        empty.copy(),
        lower=empty.copy() if interval is not None else None,
        upper=empty.copy() if interval is not None else None,
        p_surprise=empty.copy(),
        samples=np.empty((samples, 0, *drawn), np.float32) if samples else None,
    )


def _with_blank_frames(
    chunk: DenoisedChunk, gaps: BlankFrames, wanted: tuple[int, int]
) -> DenoisedChunk:
    """Renumber a chunk of measured frames as the movie does, its blank frames put back.

    Each measured frame brings the blank frames just before it (the last one those after it
    too), within the movie frames ``wanted``; a blank frame holds its one value in every
    output (NaN for a frame of no finite value) and a surprise probability of 0.
    """
    lo, hi = gaps.span(chunk.start, chunk.stop)
    lo, hi = max(lo, wanted[0]), min(hi, wanted[1])
    rows = gaps.kept[chunk.start : chunk.stop] - lo
    inside = (gaps.blank >= lo) & (gaps.blank < hi)
    where, values = gaps.blank[inside] - lo, gaps.values[inside].astype(np.float32)
    if not where.size:
        return replace(chunk, start=lo, stop=hi)

    def fill(a: np.ndarray | None, value: np.ndarray, axis: int = 0) -> np.ndarray | None:
        if a is None:
            return None
        shape = list(a.shape)
        shape[axis] = hi - lo
        out = np.empty(shape, a.dtype)
        index: list[Any] = [slice(None)] * a.ndim
        index[axis] = rows
        out[tuple(index)] = a
        index[axis] = where
        out[tuple(index)] = value.reshape((-1,) + (1,) * (a.ndim - axis - 1))
        return out

    zeros = np.zeros_like(values)
    return DenoisedChunk(
        lo,
        hi,
        fill(chunk.denoised, values),
        fill(chunk.prior, values),
        lower=fill(chunk.lower, values),
        upper=fill(chunk.upper, values),
        p_surprise=fill(chunk.p_surprise, zeros),
        samples=fill(chunk.samples, values, axis=1),
    )


def _apply_chunks(
    model: TrainedModel,
    prep: Prepared,
    cfg: Config,
    device: torch.device,
    interval: float | None,
    frames: tuple[int, int] | None = None,
    samples: int = 0,
    sample_pixels: np.ndarray | None = None,
) -> Iterator[DenoisedChunk]:
    with large_arrays():  # a quarter faster: no page fault on every temporary
        yield from _denoise_chunks(
            model, prep, cfg, device, interval, frames, samples, sample_pixels
        )


def _denoise_chunks(
    model: TrainedModel,
    prep: Prepared,
    cfg: Config,
    device: torch.device,
    interval: float | None,
    frames: tuple[int, int] | None,
    samples: int,
    sample_pixels: np.ndarray | None = None,
) -> Iterator[DenoisedChunk]:
    _check_plane_context(model.config, prep)
    net = model.inference_network(device, cfg.inference.runtime)
    noise = prep.noise
    n_frames = prep.reader.shape[0]
    k = cfg.model.context_frames
    gcfg = cfg.inference.guard
    use_posterior = cfg.inference.output == "posterior"
    correction = model.correction if gcfg.correction else None
    g_halo = (
        guard_halo(gcfg)
        + probe_halo(cfg.inference.probe_stride)
        + (correction.halo if correction else 0)
        + CHANGE_FRAMES
        + cfg.inference.variance_frames // 2
        if use_posterior
        else 0
    )
    s_halo = _spatial_halo(gcfg, correction)
    t_reach = _guard_and_correct_reach(gcfg, correction, cfg.inference.variance_frames)
    stream = (
        SampleStream(
            model.error_correlation,
            samples,
            prep.reader.shape[1:],
            cfg.train.seed,
            device,
            pixels=sample_pixels,
        )
        if samples and use_posterior
        else None
    )
    # The sampled pixels, and where each band's rows start among them (row-major order).
    pixel_mask, row_start = None, None
    if sample_pixels is not None:
        pixel_mask = torch.as_tensor(sample_pixels, device=device)
        row_start = np.concatenate([[0], np.cumsum(sample_pixels.sum(axis=1))])
    chunks = time_chunks(n_frames, cfg.inference.chunk_frames, g_halo + k, frames)
    h, w = prep.reader.shape[1:]
    carried: PriorPrediction | None = None  # the predicted frames this chunk shares with the last
    for i_chunk, chunk in enumerate(chunks):
        g0, g1 = _predicted_span(chunk, g_halo, n_frames)
        photons = noise.to_photons(prep.reader.read(chunk.read_start, chunk.read_stop))
        plane_photons = (
            prep.planes.read(chunk.read_start, chunk.read_stop) if prep.planes is not None else None
        )
        pred = PriorPrediction(*(torch.empty((g1 - g0, h, w), device=device) for _ in range(3)))
        n_old = 0
        old_probes = None
        if carried is not None:
            n_old = min(carried.loc.shape[0], g1 - g0)
            for name in ("loc", "var", "mean"):
                getattr(pred, name)[:n_old] = getattr(carried, name)[:n_old]
            old_probes = carried.probes
        # Copied in: not held beside ``pred`` through the chunk (3 x 56 MB at 512 x 512).
        carried = None
        new = _predict_prior(
            net,
            photons,
            chunk.read_start,
            n_frames,
            np.arange(g0 + n_old, g1),
            prep.mean_image,
            scale0=model.scale0,
            config=cfg,
            device=device,
            noise=noise if use_posterior else None,
            planes=prep.planes,
            plane_photons=plane_photons,
            out=PriorPrediction(pred.loc[n_old:], pred.var[n_old:], pred.mean[n_old:]),
            average=False,
        )
        if new.probes is not None:
            pred.probes = old_probes.then(new.probes) if old_probes is not None else new.probes
        del new
        release_freed_memory()  # the network's temporaries, before the guard's
        following = chunks[i_chunk + 1] if i_chunk + 1 < len(chunks) else None
        loc, level = pred.loc, pred.mean
        x = torch.from_numpy(photons[g0 - chunk.read_start : g1 - chunk.read_start]).to(device)
        keep = slice(chunk.out_start - g0, chunk.out_stop - g0)
        prior_adu = noise.to_adu(loc[keep].cpu().numpy())
        if not use_posterior:
            carried = _carry(pred, (g0, g1), following, g_halo, n_frames)
            del pred, loc, level, x, photons, plane_photons  # as below
            release_freed_memory()
            yield DenoisedChunk(chunk.out_start, chunk.out_stop, prior_adu, prior_adu)
            del prior_adu
            continue
        out = DenoisedChunk(
            chunk.out_start, chunk.out_stop, np.empty_like(prior_adu), prior_adu,
            p_surprise=np.empty_like(prior_adu),
        )  # fmt: skip
        if interval is not None:
            out.lower, out.upper = np.empty_like(prior_adu), np.empty_like(prior_adu)
        u = stream.frames(chunk.out_start, chunk.out_stop) if stream is not None else None
        if u is not None:
            out.samples = np.empty((samples, *u.shape[1:]), prior_adu.dtype)
        # The guard, the correction and the posterior run over row bands of the chunk, each
        # with the rows its windows reach, so their temporaries take MB, not GB; and over the
        # frames they reach (the chunk holds more: the probes' and the next chunk's).
        t0, t1 = max(0, keep.start - t_reach), min(x.shape[0], keep.stop + t_reach)
        keep_t = slice(keep.start - t0, keep.stop - t0)
        rows = max(1, _BAND_PIXELS // ((t1 - t0) * x.shape[2]))
        for y0, y1, a0, a1 in _row_bands(x.shape[1], rows, s_halo):
            band = (slice(t0, t1), slice(a0, a1))
            extra = model.departure.apply(loc[band], level[band])
            pvar = model.calibration.apply(pred.var[band])
            if pred.probes is not None:  # averaged band by band: no array of the whole chunk
                pvar += _average_probes(
                    pred.probes, g0 + t0, t1 - t0, (h, w), device, rows=(a0, a1)
                )
            g = _guard_and_correct(
                x[band],
                loc[band],
                pvar,
                noise,
                gcfg,
                null_scale=model.guard_null_scales,
                correction=correction,
                final=model.final_calibration,
                level=level[band],
                frames=keep_t,
                average_frames=cfg.inference.variance_frames,
                untested=extra,
            )
            inner = (slice(None), slice(y0 - a0, y1 - a0))
            xb, gb = x[band][keep_t][inner], g.take(inner)
            # The denoised value is the mean of the posterior the intervals and samples come
            # from: the guard's two components, each given the pixel's value, mixed.
            post = guarded_posterior(xb, gb, noise.pixel_variance_photons)
            rows_out = (slice(None), slice(y0, y1))
            out.denoised[rows_out] = noise.to_adu(post.mean.cpu().numpy())
            assert out.p_surprise is not None
            out.p_surprise[rows_out] = gb.p_surprise.cpu().numpy()
            # Samples to draw in this band: all its pixels, or the sampled ones it holds.
            draw = u is not None and (row_start is None or row_start[y1] > row_start[y0])
            if interval is None and not draw:
                continue
            if interval is not None:
                assert out.lower is not None and out.upper is not None
                upper_q = 0.5 + interval / 2
                out.lower[rows_out] = noise.to_adu(post.quantile(1 - upper_q).cpu().numpy())
                out.upper[rows_out] = noise.to_adu(post.quantile(upper_q).cpu().numpy())
            if draw:
                assert out.samples is not None and u is not None
                if row_start is None:
                    draws = post.sample(u[:, :, y0:y1])
                    out.samples[:, :, y0:y1] = noise.to_adu(draws.cpu().numpy())
                else:  # the band's sampled pixels only
                    assert pixel_mask is not None
                    draws = post.at(pixel_mask[y0:y1]).sample(
                        u[:, :, row_start[y0] : row_start[y1]]
                    )
                    out.samples[:, :, row_start[y0] : row_start[y1]] = noise.to_adu(
                        draws.cpu().numpy()
                    )
        carried = _carry(pred, (g0, g1), following, g_halo, n_frames)
        # Not held while the caller writes ``out``, nor while the next chunk is computed.
        del pred, loc, level, x, photons, plane_photons, prior_adu, u
        release_freed_memory()
        yield out
        del out


def _predicted_span(chunk: TimeChunk, g_halo: int, n_frames: int) -> tuple[int, int]:
    """Frames whose prior a chunk predicts: its output frames and the guard's halo."""
    return max(0, chunk.out_start - g_halo), min(n_frames, chunk.out_stop + g_halo)


def _carry(
    pred: PriorPrediction,
    span: tuple[int, int],
    following: TimeChunk | None,
    g_halo: int,
    n_frames: int,
) -> PriorPrediction | None:
    """Copy the predicted frames (of ``span``) the ``following`` chunk shares, if any."""
    if following is None:
        return None
    g0, g1 = span
    next_g0 = _predicted_span(following, g_halo, n_frames)[0]
    return pred.tail(next_g0 - g0) if g0 <= next_g0 < g1 else None


_BAND_PIXELS = 1 << 21
"""Frames x pixels of one row band (its halo included) of a chunk that the guard, the
correction and the posterior work on at once: their dozens of temporaries then take tens of
MB, where a whole 512 x 512 chunk would take GB (bands of 4 M pixels held 0.23 GB more at the
peak, of 1 M no less; the speed was the same)."""


def _spatial_halo(gcfg: GuardConfig, correction: ResidualCorrection | None) -> int:
    """Rows on each side of a band that the guard, the correction and the final stages read.

    A safe bound: the sum of the reaches of the guard's widest evidence window moved over
    its local window, of the correction's windows (which read the guard's output) and of the
    spatial window of :func:`~calmdown.calibration.temporal_change`.
    """
    guard = 0
    if gcfg.enabled:
        reach = [
            max([w.square // 2, *(max(abs(dy), abs(dx)) for dy, dx in w.offsets)])
            for w in evidence_windows(gcfg)
        ]
        guard = max(reach) + gcfg.local_pixels // 2
    corr = 0
    if correction is not None and gcfg.correction:
        corr = max(correction.evidence[1], correction.local[1], correction.core) // 2
    return guard + corr + CHANGE_PIXELS // 2


def _row_bands(height: int, rows: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Cut ``height`` rows into bands of ``rows``, each read with ``halo`` more on each side.

    Returns ``(y0, y1, a0, a1)`` per band: rows ``y0..y1`` read as ``a0..a1`` (the halo
    clipped at the frame's edges).

    Examples
    --------
    >>> _row_bands(10, 4, 1)
    [(0, 4, 0, 5), (4, 8, 3, 9), (8, 10, 7, 10)]
    """
    return [
        (y0, min(y0 + rows, height), max(0, y0 - halo), min(height, y0 + rows + halo))
        for y0 in range(0, height, rows)
    ]


def apply(
    model: TrainedModel,
    movie: MovieLike,
    *,
    key: str | None = None,
    output: str | None = None,
    **options: Any,
) -> np.ndarray:
    """Denoise a whole movie in memory with a trained model; returns float32 (T, Y, X) ADU.

    ``output="prior"`` returns the context network's prediction alone.
    """
    chunks = list(iter_apply(model, movie, key=key, output=output, **options))
    if not chunks:
        raise InputError("the movie has no frames")
    return np.concatenate([c.denoised for c in chunks]).astype(np.float32, copy=False)


def denoise(
    movie: MovieLike,
    *,
    config: Config | None = None,
    key: str | None = None,
    output: str | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    neighbours: Sequence[MovieLike] | None = None,
    init: TrainedModel | str | os.PathLike[str] | None = None,
    **options: Any,
) -> np.ndarray:
    """Train on a movie and denoise it; returns float32 (T, Y, X) in the movie's units.

    Parameters
    ----------
    movie : ndarray, path or MovieReader
        (T, Y, X) raw movie (ADU), any integer or float dtype. Not modified.
    config : Config, optional
        Settings; ``**options`` override single fields.
    key : str, optional
        Dataset inside an HDF5 or Zarr file.
    output : {"posterior", "prior"}, optional
        ``posterior`` (default) is the denoised movie; ``prior`` the context-only prediction.
    progress : callable, optional
        Training progress callback.
    neighbours : sequence of ndarray, path or MovieReader, optional
        The planes above and below of a volume recording, as context (see :func:`train`).
    init : TrainedModel or path, optional
        Fine-tune from this model's network instead of training from scratch (see
        :func:`train`).
    **options
        Flat overrides, e.g. ``time_budget_s=60``, ``seed=1``, ``device="cpu"``.

    Returns
    -------
    ndarray
        Same shape as the input, float32.

    Examples
    --------
    >>> import calmdown
    >>> sim = calmdown.simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
    >>> out = calmdown.denoise(sim.raw, time_budget_s=5, max_steps=20)
    >>> out.shape == sim.raw.shape
    True
    """
    start = _init_model(init)
    cfg = _run_config(config, options, neighbours, None, start)
    prep = prepare(movie, cfg, key=key, neighbours=neighbours)
    try:
        model = train(movie, config=cfg, progress=progress, prepared=prep, init=start)
        chunks = iter_apply(model, movie, prepared=prep, output=output)
        return np.concatenate([c.denoised for c in chunks]).astype(np.float32, copy=False)
    finally:
        prep.close()
