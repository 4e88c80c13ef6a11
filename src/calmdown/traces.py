"""ROI fluorescence and dF/F traces with credible corridors from joint posterior samples.

Each ROI's trace is the weighted mean of its pixels, offset removed (ADU above the zero-photon
level). Its posterior is taken at the ROI level (:func:`roi_posterior`): the prior's ROI errors
are correlated over the ROI's pixels and hardly average down, while the raw trace's noise does,
so the raw ROI trace is worth far more than the pixel posteriors give it. The corridors' shape
over time comes from joint Monte-Carlo samples of the clean movie (:mod:`calmdown.samples`),
whose errors are correlated across pixels and frames as the model's are. Each sample's own
baseline ``F0`` (a percentile of its trace) gives the baseline's variance and its covariance
with each frame, so the dF/F corridor includes the uncertainty of the baseline.

Corridors are Gaussian quantiles of these moments, not percentiles of the samples: the 5th and
95th percentiles of a few dozen draws cover a new draw well under 90 % of the time (about 85 %
of it with 32), so percentile corridors are too narrow by construction.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse, stats

from calmdown.calibration import isotonic
from calmdown.errors import InputError
from calmdown.io import write_atomic
from calmdown.io.rois import Rois
from calmdown.pipeline import Prepared, TrainedModel, _data_hash, iter_apply, prepare
from calmdown.posterior import gaussian_posterior
from calmdown.train import held_out_mask

__all__ = ["RoiPosterior", "RoiTraces", "roi_matrix", "roi_posterior", "roi_traces", "write_traces"]


@dataclass
class RoiTraces:
    """Traces of ``n_rois`` ROIs over ``T`` frames (float32 arrays of shape (n_rois, T)).

    Attributes
    ----------
    roi_ids : ndarray
        ROI ids, as in the ROI file.
    f_mean, f_lower, f_upper : ndarray
        Posterior mean fluorescence (ADU above offset) and the corridor's bounds.
    dff_mean, dff_lower, dff_upper : ndarray
        dF/F of the posterior mean trace and the corridor's bounds.
    f_raw : ndarray
        The raw ROI trace, for comparison.
    level : float
        Credible level of the corridors.
    n_samples : int
        Joint samples the corridors come from.
    baseline_percentile : float
        Percentile of each trace taken as F0.
    """

    roi_ids: np.ndarray
    f_mean: np.ndarray
    f_lower: np.ndarray
    f_upper: np.ndarray
    dff_mean: np.ndarray
    dff_lower: np.ndarray
    dff_upper: np.ndarray
    f_raw: np.ndarray
    level: float
    n_samples: int
    baseline_percentile: float
    corridor_factor: float = 1.0
    """Root mean ratio of the corridors' variance to the joint samples' spread (1: the pixel
    model's corridors as they are, ``calibrate=False``)."""


def roi_matrix(rois: Rois) -> sparse.csr_matrix:
    """(n_rois, Y * X) matrix of normalised weights: ``matrix @ frame.ravel()`` is the mean."""
    rows, cols, vals = [], [], []
    width = rois.shape[1]
    for i, (ys, xs, w) in enumerate(rois.masks):
        w = np.asarray(w, np.float64)
        total = w.sum()
        if total <= 0:
            raise InputError(
                f"ROI {rois.ids[i]} has no pixels of positive weight", path=rois.source
            )
        rows.append(np.full(len(ys), i))
        cols.append(np.asarray(ys) * width + np.asarray(xs))
        vals.append(w / total)
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(rois.masks), rois.shape[0] * rois.shape[1]),
    )


def _neighbour_pairs(rois: Rois, correlation: tuple[float, float]) -> np.ndarray:
    """Per ROI, the factor by which neighbour-correlated noise inflates its mean's variance."""
    ry, rx = correlation
    out = np.ones(len(rois.masks), np.float32)
    for i, (ys, xs, w) in enumerate(rois.masks):
        pix = {(int(y), int(x)): float(v) for y, x, v in zip(ys, xs, w, strict=True)}
        total = sum(v * v for v in pix.values())
        cross = sum(
            v * (ry * pix.get((y + 1, x), 0.0) + rx * pix.get((y, x + 1), 0.0))
            for (y, x), v in pix.items()
        )
        out[i] = 1.0 + 2.0 * cross / max(total, 1e-12)
    return out[:, None]


MIN_SLOPE_FRAMES = 30
"""Held-out frames an ROI needs before its prior trace's slope is fitted (else 1)."""

FREE_FRACTION = 0.1
"""Fraction of an ROI's frames counted as independent in standard errors: the prior's errors
run over many frames."""


def _excess_se(noise_var: np.ndarray) -> float:
    """Return the standard error of a mean excess ``resid**2 - noise var`` over these frames.

    Each frame's excess has variance about ``2 noise_var**2``; the frames count as
    :data:`FREE_FRACTION` of them (at least one).
    """
    nv = np.asarray(noise_var, np.float64)
    return float(np.sqrt(2.0 * np.mean(nv**2) / max(nv.size * FREE_FRACTION, 1.0)))


@dataclass
class RoiPosterior:
    """Per-frame posterior of each ROI's fluorescence (arrays of shape (n_rois, T), ADU).

    Attributes
    ----------
    mean, var : ndarray
        Posterior mean and variance.
    offset, slope : ndarray
        The least-squares line ``offset + slope * prior`` of each ROI (the calibration curve
        follows binned means where there are enough frames, and this slope beyond them).
    error_var : ndarray
        Each ROI's mean error variance of the calibrated prior trace (held-out frames).
    """

    mean: np.ndarray
    var: np.ndarray
    offset: np.ndarray
    slope: np.ndarray
    error_var: np.ndarray


def roi_posterior(
    prior: np.ndarray,
    raw: np.ndarray,
    noise_var: np.ndarray,
    checked: np.ndarray,
    profile: np.ndarray,
) -> RoiPosterior:
    """Combine each ROI's prior trace with its raw trace, calibrated on held-out frames.

    The pixel posterior weighs each pixel's own value against the prior as if the prior's
    errors were independent between pixels. They are not: a context prior shrinks a whole
    cell's transient toward the mean image at once (quiet frames come out too high, active
    ones too low), so its ROI error hardly averages down, while the raw ROI trace's noise does,
    by the ROI's pixel count. At the ROI level the raw trace is therefore worth far more than
    the pixel weights give it. Per ROI:

    1. **Calibrate the prior trace.** On held-out frames the prior never saw, the raw ROI value
       is the clean one plus noise independent of the prior, so the mean raw value at a given
       prior value estimates ``E[clean | prior]`` without ground truth: a monotone curve
       through binned means (:func:`_calibration_curve`), continued by the least-squares
       slope (pooled over ROIs), undoes the shrinkage and any offset.
    2. **Its error variance.** The mean squared residual of the raw trace about that line,
       minus the raw trace's noise variance, on the same frames; over time it follows
       ``profile`` (the joint samples' spread, wide where the guard hands pixels to the
       data). Not less than its own standard error: a variance the data cannot tell from
       zero is not taken as zero.
    3. **Bayes, frame by frame.** Prior ``N(calibrated, error variance)`` times the raw
       trace's likelihood ``N(raw, noise variance)``.

    Parameters
    ----------
    prior, raw : ndarray
        (n_rois, T) ROI traces of the network's prior and of the raw movie (ADU above offset).
    noise_var : ndarray
        (n_rois, T) noise variance of the raw ROI values.
    checked : ndarray
        (T,) bool, the frames the prior's errors are measured on: those it was not trained
        on, or all of them where its training did not memorise their noise.
    profile : ndarray
        (n_rois, T) relative error variance over time (positive).

    Returns
    -------
    RoiPosterior
    """
    n, _ = prior.shape
    sel = np.asarray(checked, bool)
    k = int(sel.sum())
    slopes = _pooled_slopes(prior[:, sel], raw[:, sel])
    offsets, error_var = np.zeros(n), np.zeros(n)
    cal = np.empty(prior.shape, np.float64)
    prior_var = np.empty(prior.shape, np.float64)
    for i in range(n):
        p, r = prior[i].astype(np.float64), raw[i].astype(np.float64)
        ps, rs, vs = p[sel], r[sel], noise_var[i, sel].astype(np.float64)
        if k:
            offsets[i] = float(np.mean(rs - slopes[i] * ps))
        cal[i] = _calibration_curve(ps, rs, p, slopes[i], offsets[i])
        rel = profile[i].astype(np.float64)
        rel = rel / max(float(np.mean(rel[sel])) if k else float(np.mean(rel)), 1e-30)
        if k:
            excess = (rs - cal[i, sel]) ** 2 - vs
            error_var[i] = max(float(np.mean(excess)), _excess_se(vs))
        else:
            error_var[i] = float(np.mean(profile[i]))
        prior_var[i] = error_var[i] * rel
    if k:
        prior_var = _by_activity(prior_var, cal, raw, noise_var, sel, error_var)
    nv = noise_var.astype(np.float64)
    mean, var = gaussian_posterior(raw.astype(np.float64), cal, prior_var, nv)
    return RoiPosterior(
        mean=mean,
        var=var,
        offset=offsets,
        slope=slopes,
        error_var=error_var,
    )


ACTIVITY_EDGES = (-1.0, 1.0, 2.0, 4.0)
"""Edges of the calibrated prior trace's departure from its median, in units of the ROI's
error sd, that split frames into classes whose error variance is fitted apart."""

MIN_CLASS_FRAMES = 50
"""ROI-frames a class needs (over all ROIs) before its own factor is fitted."""


def _by_activity(
    prior_var: np.ndarray,
    cal: np.ndarray,
    raw: np.ndarray,
    noise_var: np.ndarray,
    sel: np.ndarray,
    error_var: np.ndarray,
) -> np.ndarray:
    """Rescale the error variance per class of activity, pooled over ROIs, keeping each mean.

    The prior errs more while a cell departs from its baseline (a transient's course) than at
    rest, by more than the joint samples' spread says. Classes of the calibrated prior trace's
    departure from its median (known without the frame's own value), pooled over the ROIs, get
    the factor their held-out residuals show; then each ROI's variance is brought back to its
    own mean. (A mean residual per class, pooled over ROIs, was tried as a location
    correction too: it moved some ROIs' traces off and lowered their coverage.)
    """
    dev = (cal - np.median(cal, axis=1, keepdims=True)) / np.sqrt(np.maximum(error_var, 1e-30))[
        :, None
    ]
    cls = np.digitize(dev, ACTIVITY_EDGES)
    excess = (raw - cal) ** 2 - noise_var
    out = prior_var.copy()
    for c in range(len(ACTIVITY_EDGES) + 1):
        m = (cls == c) & sel[None, :]
        if m.sum() < MIN_CLASS_FRAMES:
            continue
        se = _excess_se(noise_var[m])
        factor = max(float(excess[m].mean()), se) / max(float(prior_var[m].mean()), 1e-30)
        out[cls == c] *= factor
    mean_before = prior_var[:, sel].mean(axis=1, keepdims=True)
    mean_after = np.maximum(out[:, sel].mean(axis=1, keepdims=True), 1e-30)
    return out * (mean_before / mean_after)


CURVE_FRAMES = 100
"""Fitted frames per bin of the calibration curve (at most :data:`CURVE_BINS` bins)."""

CURVE_BINS = 5
"""Most bins of the prior trace's values over which its calibration curve is fitted."""


def _calibration_curve(
    fit_prior: np.ndarray,
    fit_raw: np.ndarray,
    prior: np.ndarray,
    slope: float,
    offset: float,
) -> np.ndarray:
    """``E[clean | prior]`` of one ROI: a monotone curve through binned means, else a line.

    The prior's shrinkage is not a straight line: the frames at rest, the bulk of a trace,
    sit off the line that the transients set, which shifts the baseline (F0) of dF/F. With
    enough frames the fitted frames are cut into quantile bins of the prior; each bin's mean
    raw value is ``E[clean | prior]`` there (the raw noise is independent of the prior), made
    non-decreasing (pooled adjacent violators) and joined by straight segments; beyond the
    outer bins' means the curve continues with ``slope``.
    """
    n_bins = min(CURVE_BINS, fit_prior.size // CURVE_FRAMES)
    if n_bins < 2:
        return offset + slope * prior.astype(np.float64)
    edges = np.quantile(fit_prior, np.linspace(0.0, 1.0, n_bins + 1))
    idx = np.clip(np.searchsorted(edges, fit_prior, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    keep = count > 0
    x = (np.bincount(idx, fit_prior, n_bins) / np.maximum(count, 1.0))[keep]
    y = isotonic((np.bincount(idx, fit_raw, n_bins) / np.maximum(count, 1.0))[keep], count[keep])
    p = prior.astype(np.float64)
    out = np.interp(p, x, y)
    below, above = p < x[0], p > x[-1]
    out[below] = y[0] + slope * (p[below] - x[0])
    out[above] = y[-1] + slope * (p[above] - x[-1])
    return out


def _pooled_slopes(prior: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Each ROI's least-squares slope of raw on prior, shrunk toward the ROIs' common one.

    A slope is poorly known where the prior trace hardly varies over the frames it is fitted
    on (a quiet ROI); random effects (DerSimonian-Laird) pool it with the others by precision,
    so that a well-measured ROI keeps its own slope and a quiet one takes the common slope.
    Fewer than :data:`MIN_SLOPE_FRAMES` frames: slopes of 1.
    """
    n, k = prior.shape
    if k < MIN_SLOPE_FRAMES:
        return np.ones(n)
    own, var = np.ones(n), np.full(n, np.inf)
    for i in range(n):
        p, r = prior[i].astype(np.float64), raw[i].astype(np.float64)
        sxx = float(np.sum((p - p.mean()) ** 2))
        if sxx <= 0:
            continue
        own[i] = float(np.sum((p - p.mean()) * (r - r.mean())) / sxx)
        resid = r - r.mean() - own[i] * (p - p.mean())
        # The residuals run over many frames (the prior's errors are slow): count a fraction.
        var[i] = float(np.sum(resid**2)) / max(k * FREE_FRACTION - 2.0, 1.0) / sxx
    ok = np.isfinite(var)
    if not ok.any():
        return np.ones(n)
    w = 1.0 / var[ok]
    pooled = float(np.sum(w * own[ok]) / np.sum(w))
    q = float(np.sum(w * (own[ok] - pooled) ** 2))
    tau2 = max(0.0, (q - (ok.sum() - 1)) / max(float(np.sum(w) - np.sum(w**2) / np.sum(w)), 1e-30))
    out = np.full(n, pooled)
    out[ok] = pooled + tau2 / (tau2 + var[ok]) * (own[ok] - pooled)
    return out


def _baseline(f: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """``F0``, a percentile of each trace, and ``|F0|`` kept off zero (the dF/F divisor)."""
    f0 = np.percentile(f, percentile, axis=-1, keepdims=True)
    return f0, np.maximum(np.abs(f0), 1e-6)


def _dff(f: np.ndarray, percentile: float) -> np.ndarray:
    f0, scale = _baseline(f, percentile)
    return (f - f0) / scale


def _dff_moments(
    f_mean: np.ndarray, f_var: np.ndarray, f_samp: np.ndarray, percentile: float
) -> tuple[np.ndarray, np.ndarray]:
    """dF/F of the mean traces and its variance, the baseline's uncertainty included.

    ``F0`` is a percentile of each trace. To first order ``dF/F = F / F0 - 1`` has variance
    ``(var F - 2 r cov(F, F0) + r**2 var F0) / F0**2`` with ``r = F / F0``; ``var F`` is the
    posterior's own, ``var F0`` and ``cov(F, F0)`` come from the joint samples (each with its
    own baseline), so errors shared by a frame and the baseline cancel as they should.

    Parameters
    ----------
    f_mean, f_var : ndarray
        (n_rois, T) posterior mean and variance of F.
    f_samp : ndarray
        (S, n_rois, T) joint samples of F with that mean and variance.
    percentile : float
        Percentile of each trace taken as F0.

    Returns
    -------
    dff, var : ndarray
        (n_rois, T) ``(F - F0) / |F0|`` of the mean traces, and its variance.
    """
    f0, scale = _baseline(f_mean.astype(np.float64), percentile)
    f0_samp, _ = _baseline(f_samp.astype(np.float64), percentile)
    dev0 = f0_samp - f0_samp.mean(axis=0)
    ddof = max(f_samp.shape[0] - 1, 1)
    var0 = np.sum(dev0**2, axis=0) / ddof
    cov = np.sum((f_samp - f_samp.mean(axis=0)) * dev0, axis=0) / ddof
    r = f_mean * np.where(f0 < 0, -1.0, 1.0) / scale  # F / F0, with F0 kept off zero
    var = (f_var - 2 * r * cov + r**2 * var0) / scale**2
    return (f_mean - f0) / scale, np.maximum(var, 0.0)


def roi_traces(
    model: TrainedModel,
    movie: Any,
    rois: Rois,
    *,
    samples: int = 64,
    level: float = 0.9,
    baseline_percentile: float = 50.0,
    key: str | None = None,
    prepared: Prepared | None = None,
    progress: Callable[[int], None] | None = None,
    calibrate: bool = True,
    **options: Any,
) -> RoiTraces:
    """Denoise a movie and return each ROI's traces with central credible corridors.

    Parameters
    ----------
    model : TrainedModel
        Trained on this movie or another of the same rig.
    movie : ndarray, path or MovieReader
        The raw movie.
    rois : Rois
        From :func:`calmdown.io.rois.read_rois`; must match the frame shape.
    samples : int
        Joint samples behind the corridors (more: smoother bounds; memory grows as
        ``samples * n_rois * T`` floats).
    level : float
        Credible level of the corridors, in (0, 1).
    baseline_percentile : float
        Percentile of each trace taken as F0 (50: the median).
    key : str, optional
        Dataset inside an HDF5 or Zarr file.
    prepared : Prepared, optional
        First pass already made.
    progress : callable, optional
        Called with the number of frames done after each chunk.
    calibrate : bool
        Take each ROI's posterior at the ROI level (:func:`roi_posterior`: the prior trace
        calibrated against the raw trace on frames the prior was not trained on, combined
        with the raw trace frame by frame); the joint samples then give the corridors' shape
        over time, for dF/F. Off shows what the pixel-level model alone gives: the mean of
        the pixel posteriors and the samples' own spread.
    **options
        Flat config overrides for inference.

    Returns
    -------
    RoiTraces
        Over every frame of the movie; NaN at its blank frames (frames of one value, which
        measured nothing), which the corridors' statistics leave out.
    """
    if not 0 < level < 1:
        raise InputError(f"level must be between 0 and 1 (e.g. 0.9), got {level}")
    if samples < 2:
        raise InputError(f"corridors need at least 2 samples, got {samples}")
    if not 0 <= baseline_percentile <= 100:
        raise InputError(f"baseline percentile must be in 0..100, got {baseline_percentile}")
    prep = prepared or prepare(movie, model.config, key=key)
    try:
        t, h, w = prep.reader.shape
        if tuple(rois.shape) != (h, w):
            raise InputError(
                f"the ROIs lie on {rois.shape[0]} x {rois.shape[1]} frames but the movie's are "
                f"{h} x {w}; use ROIs drawn on this recording",
                path=rois.source,
            )
        mat = roi_matrix(rois).astype(np.float32)
        noise = prep.noise
        offset = float(noise.offset)
        n = len(rois.masks)
        f_mean = np.empty((n, t), np.float32)
        f_raw = np.empty((n, t), np.float32)
        f_samp = np.empty((samples, n, t), np.float32)
        # Frames on which the prior's ROI errors are measured: all of them for a movie the
        # model was not trained on, or whose trained-on frames the memorisation check found
        # fitted no better than held-out ones (as the pixel calibration does); else the
        # held-out runs only.
        memorised = bool(model.heldout.get("memorisation", {}).get("memorised", True))
        checked = (
            held_out_mask(np.arange(t), model.config.train.val_fraction, t)
            if model.data_hash == _data_hash(prep) and memorised
            else np.ones(t, bool)
        )
        sq = mat.multiply(mat).tocsr()
        pair = _neighbour_pairs(rois, noise.neighbour_correlation)
        f_prior = np.empty((n, t), np.float32)
        nv_roi = np.empty((n, t), np.float32)
        # Samples are drawn at the ROIs' pixels only (the same values there as whole frames').
        drawn = np.zeros(h * w, bool)
        drawn[np.unique(mat.indices)] = True
        mat_drawn = mat[:, drawn]
        for chunk in iter_apply(
            model,
            prep.reader,
            prepared=prep,
            samples=samples,
            sample_pixels=drawn.reshape(h, w),
            blank_frames="drop",  # the measured frames only; blank ones are NaN at the end
            **options,
        ):
            a, b = chunk.start, chunk.stop
            f_mean[:, a:b] = (mat @ chunk.denoised.reshape(b - a, -1).T) - offset
            f_prior[:, a:b] = (mat @ chunk.prior.reshape(b - a, -1).T) - offset
            raw = prep.reader.read(a, b).astype(np.float32)
            f_raw[:, a:b] = (mat @ raw.reshape(b - a, -1).T) - offset
            # The noise variance of each raw ROI value, at the denoised level (not the raw
            # value's own: that would make the weight of a frame depend on its noise).
            expected = noise.to_photons(chunk.denoised).reshape(b - a, -1)
            nv = noise.pixel_variance_photons(np.clip(expected, 0.0, None))
            nv_roi[:, a:b] = (sq @ nv.T) * pair * noise.gain**2
            assert chunk.samples is not None
            flat = chunk.samples.reshape(samples * (b - a), -1)
            f_samp[:, :, a:b] = (mat_drawn @ flat.T).reshape(n, samples, b - a).transpose(1, 0, 2)
            f_samp[:, :, a:b] -= offset
            if progress is not None:
                progress(b - a)
    finally:
        if prepared is None:
            prep.close()
    factor = 1.0
    dev = f_samp - f_samp.mean(axis=0, keepdims=True)
    own_var = np.mean(dev**2, axis=0)
    spread = own_var * (samples / (samples - 1))  # unbiased
    if calibrate:
        post = roi_posterior(f_prior, f_raw, nv_roi, checked, spread)
        factor = float(np.sqrt(post.var.mean() / max(float(spread.mean()), 1e-30)))
        unit = dev / np.sqrt(np.maximum(own_var, 1e-30))  # their own spread exactly 1
        f_mean = post.mean.astype(np.float32)
        f_var = post.var
        f_samp = f_mean[None] + np.sqrt(f_var)[None] * unit
    else:
        f_samp = f_mean[None] + dev
        f_var = spread
    dff_mean, dff_var = _dff_moments(f_mean, f_var, f_samp, baseline_percentile)
    z = float(stats.norm.ppf(0.5 + level / 2))
    f_half, d_half = z * np.sqrt(f_var), z * np.sqrt(dff_var)

    def timed(a: np.ndarray) -> np.ndarray:
        """(n_rois, T) of the movie's frames: NaN at its blank frames, which measured nothing."""
        a = a.astype(np.float32, copy=False)
        if prep.blank is None:
            return a
        out = np.full((a.shape[0], prep.blank.n_frames), np.nan, np.float32)
        out[:, prep.blank.kept] = a
        return out

    return RoiTraces(
        roi_ids=np.asarray(rois.ids),
        f_mean=timed(f_mean),
        f_lower=timed(f_mean - f_half),
        f_upper=timed(f_mean + f_half),
        dff_mean=timed(dff_mean),
        dff_lower=timed(dff_mean - d_half),
        dff_upper=timed(dff_mean + d_half),
        f_raw=timed(f_raw),
        level=level,
        n_samples=samples,
        baseline_percentile=baseline_percentile,
        corridor_factor=factor,
    )


def write_traces(
    traces: RoiTraces, out: str | os.PathLike[str], *, plot_rois: int = 6
) -> list[Path]:
    """Write ``OUT.npz``, ``OUT.csv`` (one row per ROI and frame) and ``OUT.png``.

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(out)
    base = out.with_suffix("") if out.suffix.lower() in (".npz", ".csv", ".png") else out
    npz, csv_path, png = (base.with_name(base.name + ext) for ext in (".npz", ".csv", ".png"))
    arrays = {
        k: getattr(traces, k)
        for k in ("roi_ids", "f_mean", "f_lower", "f_upper", "dff_mean", "dff_lower", "dff_upper")
    }
    arrays["f_raw"] = traces.f_raw
    arrays["level"] = np.float32(traces.level)

    def save_npz(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    def save_csv(p: Path) -> None:
        buf = io.StringIO()
        wr = csv.writer(buf)
        cols = ["f_mean", "f_lower", "f_upper", "dff_mean", "dff_lower", "dff_upper", "f_raw"]
        wr.writerow(["roi_id", "frame", *cols])
        data = [getattr(traces, c) for c in cols]
        for i, rid in enumerate(traces.roi_ids):
            for t in range(traces.f_mean.shape[1]):
                wr.writerow([int(rid), t, *(f"{d[i, t]:.6g}" for d in data)])
        p.write_text(buf.getvalue())

    write_atomic(npz, save_npz, "traces")
    write_atomic(csv_path, save_csv, "traces")
    write_atomic(png, lambda p: plot_traces(traces, p, n=plot_rois), "traces plot")
    return [npz, csv_path, png]


def plot_traces(traces: RoiTraces, path: Path, *, n: int = 6) -> None:
    """PNG of the first ``n`` ROIs: raw and posterior dF/F with its corridor."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = min(n, len(traces.roi_ids))
    fig = Figure(figsize=(10, 1.6 * max(k, 1) + 0.6))
    FigureCanvasAgg(fig)
    frames = np.arange(traces.f_mean.shape[1])
    raw_dff = _dff(traces.f_raw, traces.baseline_percentile)
    for i in range(k):
        ax = fig.add_subplot(k, 1, i + 1)
        ax.plot(frames, raw_dff[i], color="0.75", lw=0.6, label="raw")
        ax.fill_between(
            frames,
            traces.dff_lower[i],
            traces.dff_upper[i],
            color="tab:blue",
            alpha=0.3,
            lw=0,
            label=f"{100 * traces.level:.0f} % corridor",
        )
        ax.plot(frames, traces.dff_mean[i], color="tab:blue", lw=0.8, label="calmdown")
        ax.set_ylabel(f"ROI {int(traces.roi_ids[i])}\ndF/F", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7, loc="upper right", ncol=3)
    if k:
        fig.axes[-1].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
