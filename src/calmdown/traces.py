"""ROI fluorescence and dF/F traces with credible corridors from joint posterior samples.

Each ROI's trace is the weighted mean of its pixels, offset removed (ADU above the zero-photon
level). Its corridor comes from joint Monte-Carlo samples of the clean movie
(:mod:`calmdown.samples`), whose errors are correlated across the ROI's pixels and over time as
the model's are: averaging independent pixel errors would make the corridor far too narrow.
dF/F is computed per sample, ``(F - F0) / F0`` with ``F0`` a percentile of that sample's own
trace, so the corridor includes the uncertainty of the baseline.
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
from scipy import sparse

from calmdown.errors import InputError
from calmdown.io import write_atomic
from calmdown.io.rois import Rois
from calmdown.pipeline import Prepared, TrainedModel, _data_hash, iter_apply, prepare
from calmdown.train import held_out_mask

__all__ = ["RoiTraces", "roi_matrix", "roi_traces", "write_traces"]


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
    """Factor the held-out ROI residuals put on the joint samples' spread (1: none)."""


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


def _dff(f: np.ndarray, percentile: float) -> np.ndarray:
    f0 = np.percentile(f, percentile, axis=-1, keepdims=True)
    return (f - f0) / np.maximum(np.abs(f0), 1e-6)


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
        Scale the corridors so that the ROI error variance they imply matches the one seen
        on held-out frames (the prior's ROI residual minus the ROI's noise variance). Off
        shows what the pixel-level model alone gives.
    **options
        Flat config overrides for inference.

    Returns
    -------
    RoiTraces
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
        # Frames whose prior never saw their own value in training: all of them for a movie
        # the model was not trained on, else the held-out runs.
        checked = (
            held_out_mask(np.arange(t), model.config.train.val_fraction, t)
            if model.data_hash == _data_hash(prep)
            else np.ones(t, bool)
        )
        sq = mat.multiply(mat).tocsr()
        pair = _neighbour_pairs(rois, noise.neighbour_correlation)
        excess, spread = 0.0, 0.0
        for chunk in iter_apply(model, prep.reader, prepared=prep, samples=samples, **options):
            a, b = chunk.start, chunk.stop
            f_mean[:, a:b] = (mat @ chunk.denoised.reshape(b - a, -1).T) - offset
            raw = prep.reader.read(a, b).astype(np.float32)
            f_raw[:, a:b] = (mat @ raw.reshape(b - a, -1).T) - offset
            assert chunk.samples is not None
            flat = chunk.samples.reshape(samples * (b - a), -1)
            f_samp[:, :, a:b] = (mat @ flat.T).reshape(n, samples, b - a).transpose(1, 0, 2)
            f_samp[:, :, a:b] -= offset
            sel = np.flatnonzero(checked[a:b])
            if sel.size:
                # ROI residual of the prior against the raw data, minus the ROI's noise
                # variance (from the raw values, so unbiased): the ROI error variance.
                resid = (raw[sel] - chunk.prior[sel]).reshape(sel.size, -1)
                r_roi = mat @ resid.T
                photons = noise.to_photons(raw[sel]).reshape(sel.size, -1)
                nv = noise.raw_variance_photons(photons)
                nv_roi = (sq @ nv.T) * pair * noise.gain**2
                excess += float((r_roi**2 - nv_roi).sum())
                spread += float(f_samp[:, :, a + sel].var(axis=0).sum())
            if progress is not None:
                progress(b - a)
    finally:
        if prepared is None:
            prep.close()
    # Corridors widen (or narrow) by the ratio of the ROI error variance seen on held-out
    # frames to the one the joint samples imply.
    factor = float(np.sqrt(max(excess, 0.0) / spread)) if spread > 0 and calibrate else 1.0
    factor = max(factor, 1.0 / 3.0)
    f_samp = f_mean[None] + factor * (f_samp - f_samp.mean(axis=0, keepdims=True))
    q = [50 * (1 - level), 50 * (1 + level)]
    f_lo, f_hi = np.percentile(f_samp, q, axis=0)
    d_samp = _dff(f_samp, baseline_percentile)
    d_lo, d_hi = np.percentile(d_samp, q, axis=0)
    return RoiTraces(
        roi_ids=np.asarray(rois.ids),
        f_mean=f_mean,
        f_lower=f_lo.astype(np.float32),
        f_upper=f_hi.astype(np.float32),
        dff_mean=_dff(f_mean, baseline_percentile).astype(np.float32),
        dff_lower=d_lo.astype(np.float32),
        dff_upper=d_hi.astype(np.float32),
        f_raw=f_raw,
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
