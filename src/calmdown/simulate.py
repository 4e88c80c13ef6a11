"""Ground-truth two-photon calcium-imaging movies.

:func:`simulate` draws a scene in expected detected photons per pixel per frame (somata with
GCaMP in the cytoplasm, neuropil, thin processes that flash only in rare local events, mild
bleaching) and records it through a Poisson–Gaussian detector with PMT excess noise. Every
random choice comes from one ``np.random.default_rng(seed)``, so a seed gives the same movie.

The photon level ``photons`` is the median expected count over the resting cytoplasm of the
somata; the rest of the scene is scaled with it. The expected variance of a raw pixel-frame is
``detector.conversion_gain * detector.gain * photons + detector.read_noise**2`` (plus 1/12 ADU²
from rounding to integers).

Only :func:`write_simulation` touches the file system.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import numpy as np
from scipy import ndimage, signal, sparse

from calmdown.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "Detector",
    "RareEvent",
    "SimulatedMovie",
    "record",
    "sample_movie",
    "simulate",
    "write_simulation",
]

PRESETS = ("dense", "sparse", "noise", "static")

_DEFAULT_SHAPE = (2000, 128, 128)
_EVENTS_PER_DEFAULT_MOVIE = 90
_MIN_EVENTS = 12
_Z_CLASS_EDGES = (1.5, 4.0, 8.0, 40.0)
_NUCLEUS_BRIGHTNESS = 0.35  # nucleus / cytoplasm at rest
_NUCLEUS_DFF = 0.5  # nucleus dF/F / cytoplasm dF/F
_EVENT_GAP_PX = 2  # free pixels kept between event supports that are close in time
_EVENT_GAP_FRAMES = 5  # free frames kept between event supports that are close in space
_BLOCK_ELEMENTS = 1 << 21  # pixel-frames per vectorised block


@dataclass(frozen=True)
class Detector:
    """A photon-counting detector: PMT with excess noise, offset and Gaussian read noise.

    A pixel-frame with ``n`` detected photons records
    ``offset + sum of n pulse heights + Normal(0, read_noise)``, rounded to an integer. The
    pulse heights are Gamma distributed with mean ``gain`` and variance
    ``(excess_noise_factor - 1) * gain**2``.

    Parameters
    ----------
    gain : float
        Mean ADU per detected photon (mean PMT pulse height), > 0.
    excess_noise_factor : float
        ENF >= 1, the variance multiplier of the pulse-height distribution (1 = pure Poisson).
    offset : float
        ADU baseline.
    read_noise : float
        Standard deviation of the additive Gaussian noise in ADU, >= 0.

    Examples
    --------
    >>> Detector(gain=10.0, excess_noise_factor=1.25, offset=100.0, read_noise=2.0).conversion_gain
    12.5
    """

    gain: float = 10.0
    excess_noise_factor: float = 1.25
    offset: float = 100.0
    read_noise: float = 2.0

    def __post_init__(self) -> None:
        checks = (
            ("gain", self.gain, lambda v: v > 0, "a positive number of ADU per photon"),
            ("excess_noise_factor", self.excess_noise_factor, lambda v: v >= 1, "a number >= 1"),
            ("offset", self.offset, lambda v: True, "a finite number of ADU"),
            ("read_noise", self.read_noise, lambda v: v >= 0, "a number of ADU >= 0"),
        )
        for name, value, ok, what in checks:
            if not _is_real(value) or not math.isfinite(value) or not ok(value):
                raise InputError(f"Detector {name} must be {what}; got {value!r}")

    @property
    def conversion_gain(self) -> float:
        """Photon-transfer slope d var / d mean in ADU, ``gain * excess_noise_factor``."""
        return self.gain * self.excess_noise_factor


@dataclass
class RareEvent:
    """A local transient on a thin process, the ground truth of a rare event.

    Parameters
    ----------
    index : int
        Position in :attr:`SimulatedMovie.events` (events are sorted by ``t_start``).
    ys, xs : numpy.ndarray
        Integer pixel coordinates of the event's spatial support.
    weights : numpy.ndarray
        float32 spatial profile at those pixels, maximum 1.
    t_start, t_stop : int
        Frames where the time course exceeds 1 % of its peak; ``t_stop`` is exclusive.
    time_course : numpy.ndarray
        float32 ``(t_stop - t_start,)``: photons per pixel per frame added at weight 1
        (bleaching included).
    peak_photons : float
        Maximum of ``time_course``.
    z_oracle : float
        Sum of the event's clean ADU over its support divided by the square root of the sum
        of the raw noise variance over the same support.
    """

    index: int
    ys: np.ndarray
    xs: np.ndarray
    weights: np.ndarray
    t_start: int
    t_stop: int
    time_course: np.ndarray
    peak_photons: float
    z_oracle: float


@dataclass
class SimulatedMovie:
    """A simulated movie with its ground truth.

    Parameters
    ----------
    raw : numpy.ndarray
        float32 ``(T, Y, X)`` in ADU, integer-valued: what the microscope records.
    clean : numpy.ndarray
        float32 ``(T, Y, X)`` in ADU, ``E[raw | scene] = offset + gain * photons``.
    photons : numpy.ndarray
        float32 ``(T, Y, X)``: expected detected photons per pixel per frame (the scene).
    labels : numpy.ndarray
        int32 ``(Y, X)``: 0 background, 1..n_rois somata (cytoplasm ring and nucleus).
    roi_traces : numpy.ndarray
        float32 ``(n_rois, T)``: mean of ``clean - offset`` over each ROI's pixels.
    spike_times : list of numpy.ndarray
        Per ROI, the frame index of each spike (repeated when a frame holds several).
    events : list of RareEvent
        The rare events, sorted by ``t_start``.
    detector : Detector
        The detector that recorded ``raw``.
    preset : str
        One of :data:`PRESETS`.
    photons_level : float
        The requested photon level in resting cytoplasm.
    frame_rate : float
        Frames per second.
    seed : int
        The seed that reproduces this movie.
    process_mask : numpy.ndarray or None
        bool ``(Y, X)``: pixels of the thin processes outside every soma label (soma
        fluorescence stays inside its label, so no soma activity reaches them); rare events
        lie only here. All False for ``noise``.
    """

    raw: np.ndarray
    clean: np.ndarray
    photons: np.ndarray
    labels: np.ndarray
    roi_traces: np.ndarray
    spike_times: list[np.ndarray]
    events: list[RareEvent]
    detector: Detector
    preset: str
    photons_level: float
    frame_rate: float
    seed: int
    process_mask: np.ndarray | None = None

    def event_movie(self, event: RareEvent) -> np.ndarray:
        """Clean ADU contribution of one event on its support.

        Parameters
        ----------
        event : RareEvent
            One of :attr:`events`.

        Returns
        -------
        numpy.ndarray
            float32 ``(t_stop - t_start, len(ys))``,
            ``gain * time_course[:, None] * weights[None, :]``.
        """
        tc = np.asarray(event.time_course, dtype=np.float32)
        w = np.asarray(event.weights, dtype=np.float32)
        return (np.float32(self.detector.gain) * tc[:, None] * w[None, :]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# public functions


def simulate(
    preset: str = "dense",
    *,
    photons: float = 1.0,
    shape: tuple[int, int, int] = _DEFAULT_SHAPE,
    seed: int = 0,
    frame_rate: float = 30.0,
    detector: Detector | None = None,
    n_events: int | None = None,
    bleach: float = 0.1,
) -> SimulatedMovie:
    """Simulate a two-photon calcium-imaging movie with its ground truth.

    Parameters
    ----------
    preset : {"dense", "sparse", "noise", "static"}
        ``dense``: near-hexagonally packed somata; ``sparse``: 10–25 % as many, scattered;
        both with neuropil, thin processes, spikes, rare events and bleaching. ``noise``: a
        flat scene constant in time, no ROIs, no events. ``static``: the dense morphology with
        nothing varying in time (no spikes, events, neuropil fluctuation or bleaching).
    photons : float
        Expected detected photons per pixel per frame in resting cytoplasm (median over the
        somata's cytoplasm pixels); the whole scene scales with it. For ``noise`` the level
        everywhere.
    shape : tuple of int
        ``(T, Y, X)`` with T >= 20 and Y, X >= 16.
    seed : int
        Seed of ``np.random.default_rng``; the same seed gives the same movie.
    frame_rate : float
        Frames per second; sets the spike rates and GCaMP kernel in frames.
    detector : Detector or None
        Defaults to ``Detector(gain=10.0, excess_noise_factor=1.25, offset=100.0,
        read_noise=2.0)``.
    n_events : int or None
        Number of rare events. Default ``max(12, round(90 * T*Y*X / (2000*128*128)))``.
        Ignored for ``noise`` and ``static``.
    bleach : float
        The scene is multiplied by ``exp(-bleach * t / T)``. Ignored for ``noise`` and
        ``static``.

    Returns
    -------
    SimulatedMovie
        Raw and clean movies, the scene in photons, ROI labels and traces, spikes, events.

    Raises
    ------
    InputError
        For an unknown preset, a non-positive photon level, a bad shape or option.

    Warns
    -----
    UserWarning
        When fewer rare events than an explicit ``n_events`` fit into the movie (with the
        default count, a short movie simply gets fewer events; this is logged at INFO).

    Notes
    -----
    Rare events have target oracle z drawn in equal thirds log-uniformly from [1.5, 4),
    [4, 8) and [8, 40]; their peak amplitude is solved exactly for that z, see
    :class:`RareEvent`. Processes never change except by bleaching, neuropil and events.

    References
    ----------
    .. [1] Chen, T.-W. et al. Ultrasensitive fluorescent proteins for imaging neuronal
       activity. Nature 499, 295–300 (2013).

    Examples
    --------
    >>> sim = simulate("dense", photons=2.0, shape=(100, 48, 48), seed=1, n_events=4)
    >>> sim.raw.shape, sim.raw.dtype.name
    ((100, 48, 48), 'float32')
    >>> len(sim.events)
    4
    """
    detector = _validate(preset, photons, shape, seed, frame_rate, detector, n_events, bleach)
    n_t, n_y, n_x = (int(s) for s in shape)
    rng = np.random.default_rng(int(seed))
    level = float(photons)

    process_mask = np.zeros((n_y, n_x), dtype=bool)
    events: list[RareEvent] = []
    wanted = 0
    if preset == "noise":
        scene = np.full((n_t, n_y, n_x), level, dtype=np.float32)
        labels = np.zeros((n_y, n_x), dtype=np.int32)
        spike_times: list[np.ndarray] = []
    else:
        morph = _morphology(preset, (n_y, n_x), rng)
        labels = morph.labels
        process_mask = morph.process_mask
        dynamic = preset != "static"
        n_rois = int(labels.max())
        if dynamic:
            dff, spike_times = _activity(n_rois, n_t, float(frame_rate), rng)
            npil_a, npil_b = _neuropil_time(n_t, float(frame_rate), rng)
            fade = np.exp(-float(bleach) * np.arange(n_t) / n_t).astype(np.float32)
        else:
            dff = np.zeros((n_rois, n_t), dtype=np.float32)
            spike_times = [np.zeros(0, dtype=np.int64) for _ in range(n_rois)]
            npil_a = npil_b = np.zeros(n_t, dtype=np.float32)
            fade = np.ones(n_t, dtype=np.float32)
        scene = _render(morph, level, dff, npil_a, npil_b, fade, dynamic, n_t)
        if dynamic:
            default_n = round(
                _EVENTS_PER_DEFAULT_MOVIE * n_t * n_y * n_x / math.prod(_DEFAULT_SHAPE)
            )
            wanted = max(_MIN_EVENTS, default_n) if n_events is None else int(n_events)
            events = _place_events(wanted, morph.paths, process_mask, scene, fade, detector, rng)
    if len(events) < wanted and n_events is None:
        logger.info("%d of %d default rare events fit into shape %s", len(events), wanted, shape)
    elif len(events) < wanted:
        warnings.warn(
            f"only {len(events)} of {wanted} rare events fit into a movie of shape "
            f"{tuple(shape)}; pass a larger shape or a smaller n_events",
            stacklevel=2,
        )

    clean = np.empty_like(scene)
    step = max(1, _BLOCK_ELEMENTS // (n_y * n_x))
    for t0 in range(0, n_t, step):
        np.multiply(scene[t0 : t0 + step], np.float32(detector.gain), out=clean[t0 : t0 + step])
        clean[t0 : t0 + step] += np.float32(detector.offset)
    raw = _record(scene, detector, rng)
    roi_traces = _roi_means(scene, labels) * np.float32(detector.gain)

    return SimulatedMovie(
        raw=raw,
        clean=clean,
        photons=scene,
        labels=labels,
        roi_traces=roi_traces.astype(np.float32),
        spike_times=spike_times,
        events=events,
        detector=detector,
        preset=preset,
        photons_level=level,
        frame_rate=float(frame_rate),
        seed=int(seed),
        process_mask=process_mask,
    )


def record(photons: np.ndarray, detector: Detector | None = None, *, seed: int = 0) -> np.ndarray:
    """Record a scene again: new photon, PMT and read noise on the same expected photons.

    Gives a second plane that sees the same tissue (e.g. ``0.7 * sim.photons`` for a plane a
    few micrometres away, where cells are dimmer), with noise independent of ``sim.raw``.

    Parameters
    ----------
    photons : numpy.ndarray
        ``(T, Y, X)`` expected photons per pixel per frame, such as
        :attr:`SimulatedMovie.photons`.
    detector : Detector or None
        The detector; defaults to :func:`simulate`'s.
    seed : int
        Seed of the noise.

    Returns
    -------
    numpy.ndarray
        float32 raw movie in ADU, like :attr:`SimulatedMovie.raw`.

    Examples
    --------
    >>> sim = simulate("dense", photons=2.0, shape=(30, 16, 16), seed=0)
    >>> other = record(0.7 * sim.photons, sim.detector, seed=1)
    >>> other.shape == sim.raw.shape
    True
    """
    scene = np.asarray(photons, dtype=np.float32)
    if scene.ndim != 3 or not np.isfinite(scene).all() or (scene < 0).any():
        raise InputError("photons must be a (T, Y, X) array of finite values >= 0")
    return _record(scene, detector or Detector(), np.random.default_rng(int(seed)))


def sample_movie(seed: int = 0) -> SimulatedMovie:
    """Return the built-in demo movie: dense somata at 1 photon, 600 x 96 x 96.

    Parameters
    ----------
    seed : int
        Seed of the simulation.

    Returns
    -------
    SimulatedMovie
        ``simulate("dense", photons=1.0, shape=(600, 96, 96), seed=seed)``.

    Examples
    --------
    >>> sample_movie().raw.shape
    (600, 96, 96)
    """
    return simulate("dense", photons=1.0, shape=(600, 96, 96), seed=seed)


def write_simulation(sim: SimulatedMovie, directory: str | Path) -> Path:
    """Write a simulated movie and its ground truth to a directory.

    Writes ``raw.tif`` and ``clean.tif`` (float32, axes TYX), ``labels.tif`` (int32),
    ``roi_traces.npy``, ``events.json``, ``spikes.json`` and ``truth.json``. Each file is
    written to ``name + ".partial"`` first and then moved into place.

    Parameters
    ----------
    sim : SimulatedMovie
        The output of :func:`simulate`.
    directory : str or pathlib.Path
        Created if missing; files of the same names in it are replaced.

    Returns
    -------
    pathlib.Path
        The directory.

    Examples
    --------
    >>> import tempfile
    >>> sim = simulate("noise", shape=(20, 16, 16))
    >>> out = write_simulation(sim, tempfile.mkdtemp())
    >>> (out / "raw.tif").exists()
    True
    """
    import tifffile

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    def _atomic(name: str, write: Callable[[IO[Any]], object], mode: str = "wb") -> None:
        target = out / name
        partial = out / (name + ".partial")
        try:
            with open(partial, mode) as handle:
                write(handle)
            os.replace(partial, target)
        finally:
            if partial.exists():
                partial.unlink()

    for name, array, axes in (
        ("raw.tif", sim.raw.astype(np.float32, copy=False), "TYX"),
        ("clean.tif", sim.clean.astype(np.float32, copy=False), "TYX"),
        ("labels.tif", sim.labels.astype(np.int32, copy=False), "YX"),
    ):
        _atomic(name, lambda h, a=array, ax=axes: tifffile.imwrite(h, a, metadata={"axes": ax}))
    _atomic("roi_traces.npy", lambda h: np.save(h, sim.roi_traces.astype(np.float32)))

    events = [
        {
            "index": int(e.index),
            "t_start": int(e.t_start),
            "t_stop": int(e.t_stop),
            "peak_photons": float(e.peak_photons),
            "z_oracle": float(e.z_oracle),
            "ys": np.asarray(e.ys).astype(int).tolist(),
            "xs": np.asarray(e.xs).astype(int).tolist(),
            "weights": np.asarray(e.weights, dtype=float).tolist(),
            "time_course": np.asarray(e.time_course, dtype=float).tolist(),
        }
        for e in sim.events
    ]
    spikes = [np.asarray(s).astype(int).tolist() for s in sim.spike_times]
    detector = {f.name: float(getattr(sim.detector, f.name)) for f in fields(sim.detector)}
    detector["conversion_gain"] = float(sim.detector.conversion_gain)
    truth = {
        "preset": sim.preset,
        "photons_level": float(sim.photons_level),
        "seed": int(sim.seed),
        "shape": [int(s) for s in sim.raw.shape],
        "frame_rate": float(sim.frame_rate),
        "detector": detector,
        "n_rois": int(sim.roi_traces.shape[0]),
        "n_events": len(sim.events),
    }
    for name, payload in (("events.json", events), ("spikes.json", spikes), ("truth.json", truth)):
        _atomic(name, lambda h, p=payload: json.dump(p, h, indent=1), mode="w")
    return out


# --------------------------------------------------------------------------------------------
# validation


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _validate(
    preset: object,
    photons: object,
    shape: object,
    seed: object,
    frame_rate: object,
    detector: object,
    n_events: object,
    bleach: object,
) -> Detector:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; pass one of {', '.join(map(repr, PRESETS))}")
    if not _is_real(photons) or not math.isfinite(photons) or photons <= 0:
        raise InputError(
            "photons must be a positive number of detected photons per pixel per frame in "
            f"resting cytoplasm, e.g. photons=1.0; got {photons!r}"
        )
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 3
        or not all(_is_int(s) and s > 0 for s in shape)
    ):
        raise InputError(
            f"shape must be 3 positive ints (T, Y, X), e.g. (600, 96, 96); got {shape!r}"
        )
    if shape[0] < 20 or shape[1] < 16 or shape[2] < 16:
        raise InputError(
            f"shape must have T >= 20 frames and Y, X >= 16 pixels, e.g. (600, 96, 96); "
            f"got {tuple(shape)!r}"
        )
    if not _is_int(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative int, e.g. seed=0; got {seed!r}")
    if not _is_real(frame_rate) or not math.isfinite(frame_rate) or frame_rate <= 0:
        raise InputError(
            f"frame_rate must be a positive number of frames per second; got {frame_rate!r}"
        )
    if detector is None:
        detector = Detector()
    elif not isinstance(detector, Detector):
        raise InputError(f"detector must be a calmdown.simulate.Detector or None; got {detector!r}")
    if n_events is not None and (not _is_int(n_events) or n_events < 0):
        raise InputError(
            f"n_events must be None (the default count) or an int >= 0; got {n_events!r}"
        )
    if not _is_real(bleach) or not math.isfinite(bleach) or bleach < 0:
        raise InputError(f"bleach must be a number >= 0, e.g. bleach=0.1; got {bleach!r}")
    return detector


# --------------------------------------------------------------------------------------------
# morphology


@dataclass
class _Morphology:
    labels: np.ndarray  # int32 (Y, X)
    cytoplasm: np.ndarray  # bool (Y, X)
    resting: np.ndarray  # float32 (Y, X), relative units: somata + processes (no neuropil)
    activity: sparse.csr_matrix  # (n_rois, Y*X), relative dF profile per soma
    neuropil: np.ndarray  # float32 (Y, X), relative units
    neuropil_mode: np.ndarray  # float32 (Y, X), in [-1, 1], spatial mode of the fluctuation
    paths: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per process: arc, ys, xs
    process_mask: np.ndarray  # bool (Y, X)


def _morphology(preset: str, shape_yx: tuple[int, int], rng: np.random.Generator) -> _Morphology:
    n_y, n_x = shape_yx
    neuropil_level = rng.uniform(0.2, 0.4)
    radius = rng.uniform(5.5, 6.5)
    gap = rng.uniform(1.0, 3.0)
    if preset == "sparse":
        centres, radii = _sparse_centres(shape_yx, radius, gap, rng)
    else:
        centres, radii = _dense_centres(shape_yx, radius, gap, rng)
    labels, nucleus = _soma_labels(centres, radii, shape_yx, rng)
    n_rois = int(labels.max())

    # baselines chosen so resting cytoplasm (soma + neuropil) is about 1 before normalising
    baseline = (1.0 - neuropil_level) * rng.uniform(0.6, 1.5, n_rois) / 1.05
    resting = np.zeros(shape_yx, dtype=np.float64)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    objects = ndimage.find_objects(labels)
    pad = 4
    for i, box in enumerate(objects):
        if box is None:
            continue
        ys = slice(max(0, box[0].start - pad), min(n_y, box[0].stop + pad))
        xs = slice(max(0, box[1].start - pad), min(n_x, box[1].stop + pad))
        own = labels[ys, xs] == i + 1
        nuc = own & nucleus[ys, xs]
        cyto = own & ~nuc
        # soft edges that fall off inside the soma's own label: nothing spills outside it
        rest = own * ndimage.gaussian_filter(
            baseline[i] * (cyto + _NUCLEUS_BRIGHTNESS * nuc), 1.0, mode="nearest"
        )
        act = own * ndimage.gaussian_filter(
            baseline[i] * (cyto + _NUCLEUS_BRIGHTNESS * _NUCLEUS_DFF * nuc), 1.0, mode="nearest"
        )
        resting[ys, xs] += rest
        keep = act > 0
        yy, xx = np.nonzero(keep)
        rows.append(np.full(yy.size, i))
        cols.append((yy + ys.start) * n_x + (xx + xs.start))
        vals.append(act[keep])
    if rows:
        activity = sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n_rois, n_y * n_x),
            dtype=np.float32,
        )
    else:
        activity = sparse.csr_matrix((0, n_y * n_x), dtype=np.float32)

    noise = ndimage.gaussian_filter(rng.standard_normal(shape_yx), 8.0, mode="reflect")
    noise = (noise - noise.mean()) / max(noise.std(), 1e-12)
    neuropil = neuropil_level * np.clip(1.0 + 0.3 * noise, 0.3, None)
    mode = ndimage.gaussian_filter(rng.standard_normal(shape_yx), 16.0, mode="reflect")
    mode = mode / max(np.abs(mode).max(), 1e-12)

    paths = _process_paths(shape_yx, rng)
    on_process = np.zeros(shape_yx, dtype=bool)
    for _, ys_p, xs_p in paths:
        flat = np.unique(ys_p.ravel() * n_x + xs_p.ravel())
        resting.flat[flat] += rng.uniform(0.3, 0.5)
        on_process.flat[flat] = True
    return _Morphology(
        labels=labels,
        cytoplasm=(labels > 0) & ~nucleus,
        resting=resting.astype(np.float32),
        activity=activity,
        neuropil=neuropil.astype(np.float32),
        neuropil_mode=mode.astype(np.float32),
        paths=paths,
        process_mask=on_process & (labels == 0),
    )


def _dense_centres(
    shape_yx: tuple[int, int], radius: float, gap: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n_y, n_x = shape_yx
    spacing = 2 * radius + gap
    row_step = spacing * math.sqrt(3) / 2
    y0, x0 = rng.uniform(0, row_step), rng.uniform(0, spacing)
    ys = np.arange(y0 - row_step, n_y + row_step, row_step)
    centres = []
    for r, y in enumerate(ys):
        xs = np.arange(x0 - spacing + (spacing / 2) * (r % 2), n_x + spacing, spacing)
        centres.extend((y, x) for x in xs)
    c = np.asarray(centres, dtype=np.float64)
    c += rng.uniform(-1.0, 1.0, c.shape)
    radii = np.clip(radius * rng.uniform(0.85, 1.15, len(c)), 5.0, 7.0)
    return _visible(c, radii, shape_yx)


def _sparse_centres(
    shape_yx: tuple[int, int], radius: float, gap: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n_y, n_x = shape_yx
    spacing = 2 * radius + gap
    n_dense = n_y * n_x / (spacing**2 * math.sqrt(3) / 2)
    n_want = max(1, round(n_dense * rng.uniform(0.10, 0.25)))
    centres: list[tuple[float, float]] = []
    radii: list[float] = []
    for _ in range(200 * n_want):
        if len(centres) == n_want:
            break
        r = float(np.clip(radius * rng.uniform(0.85, 1.15), 5.0, 7.0))
        c = (rng.uniform(0, n_y - 1), rng.uniform(0, n_x - 1))
        if all(math.dist(c, o) > r + ro + 2 for o, ro in zip(centres, radii, strict=True)):
            centres.append(c)
            radii.append(r)
    return _visible(np.asarray(centres).reshape(-1, 2), np.asarray(radii), shape_yx)


def _visible(
    centres: np.ndarray, radii: np.ndarray, shape_yx: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Keep somata whose centre is inside the field or at most 0.3 radius outside it."""
    lim = 0.3 * radii
    keep = (
        (centres[:, 0] >= -lim)
        & (centres[:, 0] <= shape_yx[0] - 1 + lim)
        & (centres[:, 1] >= -lim)
        & (centres[:, 1] <= shape_yx[1] - 1 + lim)
    )
    return centres[keep], radii[keep]


def _soma_labels(
    centres: np.ndarray, radii: np.ndarray, shape_yx: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Disks resolved by nearest normalised distance, so somata touch but never overlap."""
    n_y, n_x = shape_yx
    best = np.full(shape_yx, np.inf)
    owner = np.zeros(shape_yx, dtype=np.int32)
    nuc_ratio = rng.uniform(0.45, 0.6, len(centres))
    for i, ((cy, cx), r) in enumerate(zip(centres, radii, strict=True)):
        y0, y1 = max(0, math.floor(cy - r)), min(n_y, math.ceil(cy + r) + 1)
        x0, x1 = max(0, math.floor(cx - r)), min(n_x, math.ceil(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        rho = np.hypot(yy - cy, xx - cx) / r
        sub = best[y0:y1, x0:x1]
        take = (rho <= 1.0) & (rho < sub)
        sub[take] = rho[take]
        owner[y0:y1, x0:x1][take] = i + 1
    counts = np.bincount(owner.ravel(), minlength=len(centres) + 1)
    kept = np.flatnonzero(counts[1:] >= 12) + 1
    relabel = np.zeros(len(centres) + 1, dtype=np.int32)
    relabel[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    labels = relabel[owner]
    ratio = np.zeros(len(centres) + 1)
    ratio[1:] = nuc_ratio
    nucleus = (labels > 0) & (best <= ratio[owner])
    return labels, nucleus


def _process_paths(
    shape_yx: tuple[int, int], rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Smooth random walks across the field: per process arc (m,), ys and xs (m, width)."""
    n_y, n_x = shape_yx
    n_steps = 4 * (n_y + n_x)
    step = 0.5
    paths = []
    for _ in range(int(rng.integers(6, 16))):
        start = rng.uniform((0.0, 0.0), (n_y - 1.0, n_x - 1.0))
        theta0 = rng.uniform(0, 2 * np.pi)
        width = int(rng.integers(1, 3))
        halves = []
        for direction in (0.0, np.pi):
            kappa = ndimage.gaussian_filter1d(rng.standard_normal(n_steps), 20.0)
            kappa *= 0.02 / max(kappa.std(), 1e-12)
            theta = theta0 + direction + np.cumsum(kappa)
            pos = start + step * np.cumsum(np.stack([np.sin(theta), np.cos(theta)], 1), 0)
            inside = (
                (pos[:, 0] > -0.5)
                & (pos[:, 0] < n_y - 0.5)
                & (pos[:, 1] > -0.5)
                & (pos[:, 1] < n_x - 0.5)
            )
            stop = int(np.argmin(inside)) if not inside.all() else n_steps
            halves.append(pos[:stop])
        path = np.concatenate([halves[1][::-1], start[None], halves[0]])
        arc = step * np.arange(len(path))
        if len(path) > 1:
            tangent = np.gradient(path, axis=0)
        else:
            tangent = np.array([[np.sin(theta0), np.cos(theta0)]])
        tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
        normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
        offsets = (0.0,) if width == 1 else (-0.5, 0.5)
        pix = np.stack([np.rint(path + o * normal) for o in offsets], 1).astype(np.int64)
        ys = np.clip(pix[..., 0], 0, n_y - 1)
        xs = np.clip(pix[..., 1], 0, n_x - 1)
        paths.append((arc, ys, xs))
    return paths


# --------------------------------------------------------------------------------------------
# activity and rendering


def _activity(
    n_rois: int, n_t: int, frame_rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Poisson spikes with occasional bursts, convolved with a GCaMP kernel: dF/F per soma."""
    rates = rng.uniform(0.2, 1.0, n_rois)
    n_silent = max(1, round(0.1 * n_rois)) if n_rois >= 3 else 0
    rates[rng.choice(n_rois, n_silent, replace=False)] = 0.0
    counts = rng.poisson(rates[:, None] / frame_rate, (n_rois, n_t))
    who, when = np.nonzero(counts)
    who, when = np.repeat(who, counts[who, when]), np.repeat(when, counts[who, when])
    burst = rng.random(who.size) < 0.1
    extra = rng.integers(2, 6, int(burst.sum()))
    b_who = np.repeat(who[burst], extra)
    b_when = np.repeat(when[burst], extra) + rng.integers(
        0, max(2, round(0.15 * frame_rate)) + 1, b_who.size
    )
    ok = b_when < n_t
    who = np.concatenate([who, b_who[ok]])
    when = np.concatenate([when, b_when[ok]])
    amplitude = rng.uniform(0.3, 1.0, n_rois)
    per_spike = amplitude[who] * rng.lognormal(0.0, 0.2, who.size)
    train = np.zeros((n_rois, n_t))
    np.add.at(train, (who, when), per_spike)

    tau_rise, tau_decay = 0.05 * frame_rate, 0.4 * frame_rate  # frames
    t_peak = tau_rise * math.log1p(tau_decay / tau_rise)
    peak = (1 - math.exp(-t_peak / tau_rise)) * math.exp(-t_peak / tau_decay)
    a_slow = math.exp(-1 / tau_decay)
    a_fast = math.exp(-(1 / tau_rise + 1 / tau_decay))
    dff = signal.lfilter([1.0], [1.0, -a_slow], train, axis=1)
    dff -= signal.lfilter([1.0], [1.0, -a_fast], train, axis=1)
    dff /= peak
    order = np.lexsort((when, who))
    who, when = who[order], when[order]
    bounds = np.searchsorted(who, np.arange(n_rois + 1))
    spikes = [when[bounds[i] : bounds[i + 1]].astype(np.int64) for i in range(n_rois)]
    return dff.astype(np.float32), spikes


def _neuropil_time(
    n_t: int, frame_rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Two slow fluctuations (smooth over about a second): global and spatial mode."""
    out = []
    for sd in (0.05, 0.03):
        f = ndimage.gaussian_filter1d(rng.standard_normal(n_t), frame_rate, mode="reflect")
        f -= f.mean()
        out.append((sd * f / max(f.std(), 1e-12)).astype(np.float32))
    return out[0], out[1]


def _render(
    morph: _Morphology,
    level: float,
    dff: np.ndarray,
    npil_a: np.ndarray,
    npil_b: np.ndarray,
    fade: np.ndarray,
    dynamic: bool,
    n_t: int,
) -> np.ndarray:
    """Render expected photons (T, Y, X), scaled so resting cytoplasm has the requested median."""
    n_y, n_x = morph.labels.shape
    rest = morph.resting + morph.neuropil
    median = float(np.median(rest[morph.cytoplasm])) if morph.cytoplasm.any() else 1.0
    scale = np.float32(level / median)
    rest = rest * scale
    npil = morph.neuropil * scale
    npil_mode = npil * morph.neuropil_mode
    activity = (morph.activity * scale).T.tocsr().astype(np.float32)  # (Y*X, n_rois)
    scene = np.empty((n_t, n_y, n_x), dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // (n_y * n_x))
    for t0 in range(0, n_t, step):
        t1 = min(n_t, t0 + step)
        block = scene[t0:t1]
        block[:] = rest
        if not dynamic:
            continue
        block += npil_a[t0:t1, None, None] * npil
        block += npil_b[t0:t1, None, None] * npil_mode
        if activity.shape[1]:
            block += np.asarray(activity @ dff[:, t0:t1]).T.reshape(t1 - t0, n_y, n_x)
        block *= fade[t0:t1, None, None]
    return scene


def _roi_means(scene: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n_rois = int(labels.max())
    n_t = scene.shape[0]
    if n_rois == 0:
        return np.zeros((0, n_t), dtype=np.float32)
    flat = labels.ravel()
    pix = np.flatnonzero(flat)
    count = np.bincount(flat, minlength=n_rois + 1)[1:].astype(np.float64)
    mean_op = sparse.csr_matrix(
        ((1.0 / count[flat[pix] - 1]).astype(np.float32), (flat[pix] - 1, pix)),
        shape=(n_rois, flat.size),
    )
    return np.asarray(mean_op @ scene.reshape(n_t, -1).T, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# rare events


def _target_z(n: int, rng: np.random.Generator) -> np.ndarray:
    """Oracle z targets: equal thirds in [1.5, 4), [4, 8), [8, 40], log-stratified in each."""
    klass = np.arange(n) % 3
    rng.shuffle(klass)
    z = np.empty(n)
    for k in range(3):
        idx = np.flatnonzero(klass == k)
        lo, hi = math.log(_Z_CLASS_EDGES[k]), math.log(_Z_CLASS_EDGES[k + 1])
        u = (rng.permutation(idx.size) + rng.random(idx.size)) / max(idx.size, 1)
        z[idx] = np.exp(lo + (hi - lo) * u)
    return z


def _time_course(n_t: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """Fast rise (peak after 1–2 frames), exponential decay of 10–25 frames, cut at 1 %."""
    tau_rise = rng.uniform(0.4, 0.8)
    tau_decay = min(rng.uniform(10.0, 25.0), (n_t - 4) / 6.0)
    onset = rng.random()
    k = np.arange(math.ceil(onset + 5 * tau_rise + 4.7 * tau_decay) + 2, dtype=np.float64)
    dt = np.maximum(k - onset, 0.0)
    c = (1 - np.exp(-dt / tau_rise)) * np.exp(-dt / tau_decay)
    big = np.flatnonzero(c > 0.01 * c.max())
    return int(big[0]), c[big[0] : big[-1] + 1]


def _place_events(
    n_events: int,
    paths: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    process_mask: np.ndarray,
    scene: np.ndarray,
    fade: np.ndarray,
    detector: Detector,
    rng: np.random.Generator,
) -> list[RareEvent]:
    """Place non-overlapping events on process pixels and add them to ``scene`` in place."""
    if n_events == 0:
        return []
    n_t = scene.shape[0]
    step = [float(arc[1] - arc[0]) if arc.size > 1 else 0.5 for arc, _, _ in paths]
    valid = [process_mask[ys_p, xs_p].all(axis=1) for _, ys_p, xs_p in paths]
    weight = np.array([v.sum() for v in valid], dtype=np.float64)
    if weight.sum() == 0:
        return []
    prob = weight / weight.sum()
    targets = _target_z(n_events, rng)
    placed: list[tuple[int, int, np.ndarray]] = []  # t_start, t_stop, (n, 2) pixels
    events = []
    g, cg, rn2 = detector.gain, detector.conversion_gain, detector.read_noise**2
    for z_target in targets:
        for _ in range(1000):
            j = int(rng.choice(len(paths), p=prob))
            arc, ys_p, xs_p = paths[j]
            length = rng.uniform(3.0, 8.0)
            n_s = int(length / step[j]) + 1
            # starts of runs of n_s samples whose pixels all lie in process_mask
            run = np.convolve(valid[j].astype(np.int64), np.ones(n_s, np.int64), "valid")
            starts = np.flatnonzero(run == n_s)
            if starts.size == 0:
                continue
            i0 = int(starts[rng.integers(starts.size)])
            s0 = float(arc[i0])
            length = float(arc[i0 + n_s - 1] - s0)
            ys = ys_p[i0 : i0 + n_s].ravel()
            xs = xs_p[i0 : i0 + n_s].ravel()
            pos = np.repeat(arc[i0 : i0 + n_s], ys_p.shape[1])
            _, course = _time_course(n_t, rng)
            t_start = int(rng.integers(0, n_t - course.size + 1))
            t_stop = t_start + course.size
            _, first, inverse = np.unique(
                ys * scene.shape[2] + xs, return_index=True, return_inverse=True
            )
            support = np.stack([ys[first], xs[first]], 1)
            if _conflicts(support, t_start, t_stop, placed):
                continue
            arc_mean = np.bincount(inverse, pos) / np.bincount(inverse)
            mid = s0 + length / 2
            weights = np.exp(-0.5 * ((arc_mean - mid) / (length / 3)) ** 2)
            weights = (weights / weights.max()).astype(np.float32)
            shape_t = course * fade[t_start:t_stop]
            shape_t = shape_t / shape_t.max()
            unit = shape_t[:, None] * weights[None, :].astype(np.float64)
            u_sum = unit.sum()
            background = scene[t_start:t_stop, support[:, 0], support[:, 1]].astype(np.float64)
            v0 = (cg * g * background + rn2).sum()
            # z^2 (v0 + cg g A U) = g^2 A^2 U^2, solved for the amplitude A
            b = z_target**2 * cg * g * u_sum
            amp = (b + math.sqrt(b * b + 4 * g**2 * u_sum**2 * z_target**2 * v0)) / (
                2 * g**2 * u_sum**2
            )
            course32 = (amp * shape_t).astype(np.float32)
            added = course32[:, None] * weights[None, :]
            scene[t_start:t_stop, support[:, 0], support[:, 1]] += added
            total = scene[t_start:t_stop, support[:, 0], support[:, 1]].astype(np.float64)
            signal_sum = float((np.float32(g) * added).astype(np.float64).sum())
            z = signal_sum / math.sqrt(float((cg * g * total + rn2).sum()))
            placed.append((t_start, t_stop, support))
            events.append(
                RareEvent(
                    index=-1,
                    ys=support[:, 0].copy(),
                    xs=support[:, 1].copy(),
                    weights=weights,
                    t_start=t_start,
                    t_stop=t_stop,
                    time_course=course32,
                    peak_photons=float(course32.max()),
                    z_oracle=z,
                )
            )
            break
    events.sort(key=lambda e: (e.t_start, int(e.ys[0]), int(e.xs[0])))
    for i, e in enumerate(events):
        e.index = i
    return events


def _conflicts(
    support: np.ndarray, t_start: int, t_stop: int, placed: list[tuple[int, int, np.ndarray]]
) -> bool:
    """Whether a candidate comes within the space-time gap of an already placed event."""
    for p_start, p_stop, p_support in placed:
        if t_start >= p_stop + _EVENT_GAP_FRAMES or p_start >= t_stop + _EVENT_GAP_FRAMES:
            continue
        cheb = np.abs(support[:, None, :] - p_support[None, :, :]).max(-1)
        if cheb.min() <= _EVENT_GAP_PX:
            return True
    return False


# --------------------------------------------------------------------------------------------
# detector


def _record(scene: np.ndarray, detector: Detector, rng: np.random.Generator) -> np.ndarray:
    """Poisson photons, Gamma PMT pulse heights, offset, Gaussian read noise, rounding."""
    raw = np.empty_like(scene, dtype=np.float32)
    n_t = scene.shape[0]
    step = max(1, _BLOCK_ELEMENTS // (scene.shape[1] * scene.shape[2]))
    enf = detector.excess_noise_factor
    k = None if enf == 1.0 else 1.0 / (enf - 1.0)
    for t0 in range(0, n_t, step):
        t1 = min(n_t, t0 + step)
        n = rng.poisson(scene[t0:t1])
        if k is None:
            adu = (n * detector.gain).astype(np.float32)
        else:
            adu = np.zeros(n.shape, dtype=np.float32)
            hit = n > 0
            adu[hit] = rng.standard_gamma((n[hit] * k).astype(np.float32), dtype=np.float32)
            adu *= np.float32(detector.gain / k)
        adu += np.float32(detector.offset)
        if detector.read_noise > 0:
            noise = rng.standard_normal(adu.shape, dtype=np.float32)
            noise *= np.float32(detector.read_noise)
            adu += noise
        np.rint(adu, out=raw[t0:t1])
    return raw
