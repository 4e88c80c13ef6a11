"""Figures of the report, drawn with matplotlib's Agg canvas and returned as PNG bytes.

No pyplot: each function builds its own :class:`~matplotlib.figure.Figure`, so nothing global
(backend, open figures) is touched and the functions are safe in threads and notebooks.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from calmdown.noise import NoiseModel

__all__ = [
    "calibration_figure",
    "filmstrip_figure",
    "hallucination_figure",
    "mean_images_figure",
    "photon_transfer_figure",
    "residual_figure",
    "surprise_figure",
    "wobble_figure",
]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _image(ax: Any, img: np.ndarray, title: str, **kwargs: Any) -> Any:
    im = ax.imshow(img, interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _limits(*images: np.ndarray) -> tuple[float, float]:
    values = np.concatenate([np.ravel(i)[np.isfinite(np.ravel(i))] for i in images])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.8])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def mean_images_figure(
    mean_raw: np.ndarray, mean_den: np.ndarray, mean_width: np.ndarray | None
) -> bytes:
    """Mean raw and denoised images, their difference, and the mean 90 % interval width."""
    n = 4 if mean_width is not None else 3
    aspect = mean_raw.shape[0] / mean_raw.shape[1]
    fig = _figure(3.0 * n, 3.0 * aspect + 0.8)
    axes = fig.subplots(1, n)
    lo, hi = _limits(mean_raw, mean_den)
    _image(axes[0], mean_raw, "mean of raw (ADU)", cmap="gray", vmin=lo, vmax=hi)
    im = _image(axes[1], mean_den, "mean of denoised (ADU)", cmap="gray", vmin=lo, vmax=hi)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    diff = mean_raw - mean_den
    lim = float(np.percentile(np.abs(diff), 99.5)) or 1.0
    im = _image(axes[2], diff, "raw − denoised (ADU)", cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    if mean_width is not None:
        whi = float(np.percentile(mean_width, 99.5)) or 1.0
        im = _image(
            axes[3], mean_width, "mean 90 % interval width (ADU)", cmap="magma", vmin=0, vmax=whi
        )
        fig.colorbar(im, ax=axes[3], shrink=0.8)
    return _png(fig)


def photon_transfer_figure(noise: NoiseModel) -> bytes:
    """Binned mean against temporal-difference noise variance, with the fitted line."""
    fig = _figure(5.0, 3.6)
    ax = fig.subplots()
    bm = np.asarray(noise.bin_means, float)
    bv = np.asarray(noise.bin_variances, float)
    if bm.size:
        ax.plot(bm, bv, "o", ms=4, color="C0", label="brightness bins (data)")
        xs = np.linspace(min(noise.offset, bm.min()), bm.max() * 1.05, 50)
    else:
        xs = np.linspace(noise.offset, noise.offset + 20 * noise.gain, 50)
        ax.text(0.05, 0.9, "no photon-transfer points stored", transform=ax.transAxes)
    line = noise.gain * (xs - noise.offset) + noise.read_noise**2
    ax.plot(
        xs,
        line,
        "-",
        color="C3",
        label=f"fit: gain {noise.gain:.3g} ADU/photon, offset {noise.offset:.4g} ADU",
    )
    ax.axvline(noise.offset, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("mean (ADU)")
    ylabel = "noise variance (ADU²)"
    if noise.variance_ratio < 0.95:
        ylabel = "noise variance summed over neighbours (ADU²)"
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _png(fig)


def calibration_figure(heldout: dict[str, Any]) -> bytes:
    """PIT histogram of held-out raw values under the predictive distribution."""
    fig = _figure(5.0, 3.2)
    ax = fig.subplots()
    hist = np.asarray(heldout.get("pit_hist") or [], float)
    if hist.size:
        edges = np.linspace(0, 1, hist.size + 1)
        ax.bar(edges[:-1], hist, width=np.diff(edges), align="edge", color="C0", edgecolor="white")
        ax.axhline(1.0 / hist.size, color="C3", ls="--", label="perfect calibration")
        ax.set_ylim(0, max(0.2, float(hist.max()) * 1.15))
        ax.legend(fontsize=8)
    else:
        ax.text(0.05, 0.5, "this model file has no PIT histogram", transform=ax.transAxes)
    ax.set_xlabel("PIT: predictive CDF at the held-out raw value")
    ax.set_ylabel("fraction of pixel-frames")
    return _png(fig)


def wobble_figure(ratio_map: np.ndarray, quiet: np.ndarray) -> bytes:
    """Map of the fine-structure change ratio, with the quiet pixels it is scored on."""
    aspect = ratio_map.shape[0] / ratio_map.shape[1]
    fig = _figure(8.0, 3.6 * aspect + 0.8)
    axes = fig.subplots(1, 2)
    hi = max(1.0, float(np.nanpercentile(ratio_map, 99)))
    im = _image(
        axes[0],
        ratio_map,
        "wobble ratio per pixel (1 = moving average)",
        cmap="viridis",
        vmin=0,
        vmax=hi,
    )
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    _image(axes[1], quiet, "quiet pixels (white): scored", cmap="gray", vmin=0, vmax=1)
    return _png(fig)


def hallucination_figure(h_map: np.ndarray, activity: np.ndarray, quiet: np.ndarray) -> bytes:
    """Raw activity z-score, and the hallucination ratio on quiet pixels."""
    aspect = h_map.shape[0] / h_map.shape[1]
    fig = _figure(8.0, 3.6 * aspect + 0.8)
    axes = fig.subplots(1, 2)
    act = np.clip(activity, -5, 50)
    im = _image(
        axes[0],
        act,
        "raw activity (z; quiet below 2)",
        cmap="cividis",
        vmin=-3,
        vmax=max(10.0, float(np.percentile(act, 99))),
    )
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    shown = np.ma.masked_invalid(h_map)
    im = _image(
        axes[1], shown, "denoised / raw coherent variance (quiet)", cmap="RdYlGn_r", vmin=0, vmax=2
    )
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    return _png(fig)


def residual_figure(resid: dict[str, Any]) -> bytes:
    """Autocorrelation of standardised residuals in time, y and x, with the white-noise band."""
    fig = _figure(6.0, 3.4)
    ax = fig.subplots()
    lags = np.asarray(resid["lags"])
    band = float(resid["band"])
    ax.axhspan(-band, band, color="0.85", label="white noise (±2 s.e.)")
    ax.axhline(0, color="0.4", lw=0.8)
    for key, label, off, color in (
        ("time", "time (frames)", -0.15, "C0"),
        ("y", "y (pixels)", 0.0, "C1"),
        ("x", "x (pixels)", 0.15, "C2"),
    ):
        ax.plot(lags + off, resid[key], "o-", color=color, label=f"lag in {label}", ms=5)
    ax.set_xticks(lags)
    ax.set_xlabel("lag")
    ax.set_ylabel("autocorrelation of (raw − denoised)/sd")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def surprise_figure(
    p_max: np.ndarray, p_mean: np.ndarray, points: list[tuple[int, int, int]]
) -> bytes:
    """Maximum and mean surprise probability over time; numbered candidate positions."""
    aspect = p_max.shape[0] / p_max.shape[1]
    fig = _figure(8.0, 3.6 * aspect + 0.8)
    axes = fig.subplots(1, 2)
    im = _image(
        axes[0], p_max, "max surprise probability over time", cmap="inferno", vmin=0, vmax=1
    )
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    hi = max(float(np.percentile(p_mean, 99.5)), 1e-3)
    im = _image(axes[1], p_mean, "mean surprise probability", cmap="inferno", vmin=0, vmax=hi)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    for rank, y, x in points:
        axes[0].annotate(
            str(rank), (x, y), color="cyan", fontsize=8, ha="center", va="center", weight="bold"
        )
    return _png(fig)


def filmstrip_figure(
    crops: dict[str, np.ndarray], frames: list[int], active: tuple[int, int]
) -> bytes:
    """Raw, denoised and prior crops over time (rows), frames of the region marked."""
    n = len(frames)
    fig = _figure(1.0 * n + 0.9, 3.4)
    axes = np.atleast_2d(fig.subplots(3, n, squeeze=False))
    lo = float(
        np.percentile(np.concatenate([crops["prior"].ravel(), crops["denoised"].ravel()]), 1)
    )
    hi = float(
        np.percentile(np.concatenate([crops["raw"].ravel(), crops["denoised"].ravel()]), 99.5)
    )
    hi = hi if hi > lo else lo + 1.0
    for i, (key, label) in enumerate(
        (("raw", "raw"), ("denoised", "denoised"), ("prior", "prior"))
    ):
        for j, t in enumerate(frames):
            ax = axes[i, j]
            ax.imshow(crops[key][j], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                inside = active[0] <= t < active[1]
                ax.set_title(f"{t}", fontsize=7, color="C3" if inside else "0.3")
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    return _png(fig)
