"""Quality metrics against the simulator's ground truth, shared by the benchmarks.

Every metric takes an estimate of the clean movie (ADU, same shape) and the
:class:`~calmdown.simulate.SimulatedMovie`, so all methods are scored the same way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter1d

from calmdown.simulate import SimulatedMovie


def moving_average(raw: np.ndarray, width: int = 5) -> np.ndarray:
    """Centred moving average over ``width`` frames (edges: nearest frame repeated)."""
    return uniform_filter1d(raw.astype(np.float32), width, axis=0, mode="nearest")


def psnr(est: np.ndarray, sim: SimulatedMovie, frames: np.ndarray | None = None) -> float:
    """PSNR in dB against the clean movie, peak = the clean movie's range.

    ``frames``: score these frames only (the peak stays the whole movie's).
    """
    rng = float(sim.clean.max() - sim.clean.min())
    clean = sim.clean if frames is None else sim.clean[frames]
    est = est if frames is None else est[frames]
    mse = float(np.mean((est.astype(np.float64) - clean) ** 2))
    return 10 * np.log10(rng**2 / mse)


def roi_traces(movie: np.ndarray, labels: np.ndarray, offset: float) -> np.ndarray:
    """Mean over each ROI's pixels, offset removed: (n_rois, T)."""
    n = int(labels.max())
    flat = movie.reshape(movie.shape[0], -1)
    lab = labels.ravel()
    out = np.empty((n, movie.shape[0]), np.float64)
    for i in range(1, n + 1):
        out[i - 1] = flat[:, lab == i].mean(axis=1) - offset
    return out


def dff(traces: np.ndarray) -> np.ndarray:
    """dF/F with F0 the median of each trace (robust to noise, sparse activity)."""
    f0 = np.median(traces, axis=1, keepdims=True)
    return (traces - f0) / np.maximum(np.abs(f0), 1e-6)


def trace_metrics(est: np.ndarray, sim: SimulatedMovie) -> dict[str, float]:
    """Median ROI-trace correlation and dF/F RMSE (mean over ROIs) against the clean traces."""
    if sim.labels.max() == 0:
        return {"trace_corr": float("nan"), "dff_rmse": float("nan")}
    off = sim.detector.offset
    t_est = roi_traces(est, sim.labels, off)
    t_true = roi_traces(sim.clean, sim.labels, off)
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(t_est, t_true, strict=True)]
    d_est, d_true = dff(t_est), dff(t_true)
    rmse = np.sqrt(np.mean((d_est - d_true) ** 2, axis=1))
    return {"trace_corr": float(np.nanmedian(corr)), "dff_rmse": float(np.mean(rmse))}


def quiet_mask(sim: SimulatedMovie) -> np.ndarray:
    """Pixel-frames (t, y, x) for t in 0..T-2 where the truth does not change: wobble region.

    Background and process pixels outside rare events, and ROI pixels while the ROI's clean
    dF/F stays below 0.02 at both t and t+1.
    """
    t_len = sim.clean.shape[0]
    mask = np.ones((t_len - 1, *sim.clean.shape[1:]), bool)
    if sim.labels.max() > 0:
        d = dff(roi_traces(sim.clean, sim.labels, sim.detector.offset))
        active = (np.abs(d[:, :-1]) >= 0.02) | (np.abs(d[:, 1:]) >= 0.02)  # (n_rois, T-1)
        for i in range(1, int(sim.labels.max()) + 1):
            pix = sim.labels == i
            mask[:, pix] &= ~active[i - 1][:, None]
    for ev in sim.events:
        t0, t1 = max(ev.t_start - 1, 0), min(ev.t_stop, t_len - 1)
        mask[t0:t1, ev.ys, ev.xs] = False
    return mask


def wobble(est: np.ndarray, sim: SimulatedMovie, mask: np.ndarray | None = None) -> float:
    """RMS frame-to-frame change of fine structure where the truth is static.

    Fine structure is the spatial high-pass (minus a Gaussian blur of sigma 2 px) of the error
    ``est - clean``; its change between consecutive frames is measured on :func:`quiet_mask`.
    """
    mask = quiet_mask(sim) if mask is None else mask
    err = est.astype(np.float32) - sim.clean
    hp = err - gaussian_filter(err, sigma=(0, 2, 2))
    diff = np.diff(hp, axis=0)
    return float(np.sqrt(np.mean(diff[mask] ** 2)))


def event_kept(est: np.ndarray, sim: SimulatedMovie) -> list[tuple[float, float]]:
    """For each rare event: (oracle z, fraction of its amplitude kept).

    The kept fraction is the least-squares amplitude of the event's clean template in
    ``est - (clean - event)`` over the event's support, divided by the true amplitude (1).
    """
    out = []
    for ev in sim.events:
        tmpl = sim.event_movie(ev).astype(np.float64)  # (n_t, n_pix)
        ts = slice(ev.t_start, ev.t_stop)
        base = sim.clean[ts][:, ev.ys, ev.xs] - tmpl
        got = est[ts][:, ev.ys, ev.xs] - base
        out.append((float(ev.z_oracle), float(np.sum(got * tmpl) / np.sum(tmpl * tmpl))))
    return out


def events_by_class(kept: list[tuple[float, float]]) -> dict[str, float]:
    """Median kept fraction for z < 4, 4 <= z < 8 and z >= 8 (NaN where a class is empty)."""
    z = np.array([k[0] for k in kept]) if kept else np.zeros(0)
    f = np.array([k[1] for k in kept]) if kept else np.zeros(0)
    classes = {"kept_z<4": z < 4, "kept_z4-8": (z >= 4) & (z < 8), "kept_z>=8": z >= 8}
    return {
        name: (float(np.median(f[sel])) if np.any(sel) else float("nan"))
        for name, sel in classes.items()
    }


def all_metrics(est: np.ndarray, sim: SimulatedMovie, mask: np.ndarray | None = None) -> dict:
    """Every metric of one estimate."""
    out = {"psnr": psnr(est, sim), "wobble": wobble(est, sim, mask)}
    out.update(trace_metrics(est, sim))
    out.update(events_by_class(event_kept(est, sim)))
    return out


def write_rows(path: Path, args: argparse.Namespace, rows: list[dict]) -> None:
    """Write a benchmark's arguments and result rows as JSON (atomically) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
    )
    tmp.replace(path)
    print(f"wrote {path}")
