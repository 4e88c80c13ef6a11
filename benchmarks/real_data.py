"""calmdown on the real recordings in ``shared/data``, scored without ground truth.

For each recording (``optinist-mouse2p-top-2000x64x128.tif`` and
``allen-registered-100x100x100.h5``) this trains calmdown through the public API
(:func:`calmdown.prepare`, :func:`calmdown.train`, :func:`calmdown.iter_apply`), denoises the
movie and compares it with the raw movie and a centred 5-frame moving average. There is no
clean movie to compare with, so the numbers are ones that stay honest on real data:

- the fitted noise model (gain, offset, read noise, photons per pixel per frame, neighbour
  correlation of the noise, variance ratio), training time and steps, the held-out
  calibration check (coverage of 90 % raw intervals, PIT KS) and inference speed;
- **wobble proxy**: mean over frames of the RMS of the temporal difference of the spatially
  high-passed movie (``x - gaussian_filter(x, (0, 2, 2))``); noise and flicker raise it;
- **residual check**: correlation of ``raw - denoised`` between neighbouring frames and between
  neighbouring pixels along x, beside the same correlations of the raw noise (estimated from
  temporal differences of the raw movie). A denoiser that removes only noise leaves residuals
  correlated like the noise; extra correlation means it removed signal (structure). The
  moving average's residual is shown too; its lag-1 correlation is -0.3 for white noise from
  the filter alone;
- **activity kept**: in the 5 % most active pixels (temporal sd of the moving average), the
  temporal variance of the output divided by that of the raw movie, beside the ceiling a
  perfect denoiser would reach (the raw movie's variance minus its noise variance);
- fraction of raw values at 0 (clipped) and below the fitted offset.

It writes one figure per recording (``<stem>.png``: raw | moving average | calmdown | calmdown
prior; mean image and three single frames) plus a zoom on the most active pixel
(``<stem>_zoom.png``), prints one table and writes ``real_data.json``.

Usage::

    python benchmarks/real_data.py                  # 180 s of training per recording
    python benchmarks/real_data.py --budget 10      # quick smoke run (numbers not meaningful)
    python benchmarks/real_data.py --data-dir /path/to/shared/data --out /tmp/real
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter1d

import calmdown

#: Recordings scored, as (file name, HDF5 key or None).
RECORDINGS: list[tuple[str, str | None]] = [
    ("optinist-mouse2p-top-2000x64x128.tif", None),
    ("allen-registered-100x100x100.h5", "data"),
]

REPO = Path(__file__).resolve().parent.parent
MA_WIDTH = 5
TOP_FRACTION = 0.05
ZOOM_SIZE = 32
ZOOM_FRAMES = 8


@dataclass
class Movies:
    """The movies of one recording compared (float32, ADU, shape (T, Y, X)).

    Attributes
    ----------
    raw : ndarray
        The recording as read.
    moving_average : ndarray
        Centred moving average of ``raw`` over :data:`MA_WIDTH` frames.
    denoised : ndarray
        calmdown's output (posterior mean with the surprise guard).
    prior : ndarray
        calmdown's context prediction alone (shown for context only).
    frames : dict of str to int
        Frames shown in the overview figure (see :func:`pick_frames`).
    """

    raw: np.ndarray
    moving_average: np.ndarray
    denoised: np.ndarray
    prior: np.ndarray
    frames: dict[str, int] = field(default_factory=dict)


# -- metrics -------------------------------------------------------------------------------


def high_pass(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Spatial high-pass: each frame minus its Gaussian blur (``sigma`` pixels)."""
    x = x.astype(np.float32, copy=False)
    return x - gaussian_filter(x, (0, sigma, sigma))


def wobble_proxy(x: np.ndarray) -> float:
    """Mean over frame pairs of the RMS temporal difference of the high-passed movie (ADU).

    Parameters
    ----------
    x : ndarray
        (T, Y, X) movie.

    Returns
    -------
    float
        Low for a movie whose fine spatial detail does not flicker from frame to frame.
    """
    d = np.diff(high_pass(x), axis=0)
    return float(np.mean(np.sqrt(np.mean(d.astype(np.float64) ** 2, axis=(1, 2)))))


def lag_correlation(a: np.ndarray, axis: int) -> float:
    """Correlation between ``a`` and itself shifted by one along ``axis`` (no mean removed).

    Parameters
    ----------
    a : ndarray
        Array already centred as the caller wants.
    axis : int
        Axis of the shift (0: time, 2: x).

    Returns
    -------
    float
    """
    n = a.shape[axis]
    a0 = np.take(a, np.arange(n - 1), axis=axis).astype(np.float64)
    a1 = np.take(a, np.arange(1, n), axis=axis).astype(np.float64)
    return float(np.sum(a0 * a1) / np.sqrt(np.sum(a0**2) * np.sum(a1**2)))


def noise_correlations(raw: np.ndarray) -> dict[str, float]:
    """Correlations and sd of the raw noise, from temporal differences of the raw movie.

    Temporal differences cancel slow signal. Their x-neighbour correlation is the noise's
    own. Their lag-1 correlation ``c`` is ``-0.5`` for noise that is white in time; for noise
    with lag-1 correlation ``rho`` (and none at lag 2), ``c = (2 rho - 1) / (2 - 2 rho)``, so
    ``rho = (2c + 1) / (2c + 2)``.

    Parameters
    ----------
    raw : ndarray
        (T, Y, X) raw movie.

    Returns
    -------
    dict
        ``noise_t`` (lag-1 temporal correlation), ``noise_x`` (x-neighbour correlation),
        ``noise_sd`` (ADU, mean over pixels of the per-pixel noise variance, square-rooted).
    """
    d = np.diff(raw.astype(np.float32), axis=0)
    d -= d.mean(axis=0, keepdims=True)
    c = lag_correlation(d, 0)
    return {
        "noise_t": (2 * c + 1) / (2 * c + 2),
        "noise_x": lag_correlation(d, 2),
        "noise_sd": float(np.sqrt(np.mean(d.astype(np.float64) ** 2) / 2)),
    }


def residual_check(raw: np.ndarray, est: np.ndarray, noise_sd: float) -> dict[str, float]:
    """Correlations of ``raw - est`` in time and along x, and its sd relative to the noise.

    Each pixel's mean residual is removed first, so a constant bias does not count as
    correlation.

    Parameters
    ----------
    raw, est : ndarray
        (T, Y, X) raw movie and estimate of the clean movie.
    noise_sd : float
        Noise sd of the raw movie (ADU), from :func:`noise_correlations`.

    Returns
    -------
    dict
        ``t`` (lag-1 temporal correlation), ``x`` (x-neighbour correlation), ``sd_ratio``
        (residual sd / noise sd: near 1 when noise alone was removed, above 1 when signal was
        too, below 1 when noise was left in).
    """
    r = raw.astype(np.float32) - est.astype(np.float32)
    r -= r.mean(axis=0, keepdims=True)
    return {
        "t": lag_correlation(r, 0),
        "x": lag_correlation(r, 2),
        "sd_ratio": float(np.sqrt(np.mean(r.astype(np.float64) ** 2)) / noise_sd),
    }


def activity_kept(movies: Movies) -> dict[str, float]:
    """Temporal variance kept in the most active pixels.

    Activity is the temporal sd of the moving average; the top :data:`TOP_FRACTION` of pixels
    are scored. Variances are per pixel about its own mean, summed over those pixels.

    Parameters
    ----------
    movies : Movies
        The recording's movies.

    Returns
    -------
    dict
        ``kept_denoised`` and ``kept_ma`` (output variance / raw variance) and ``kept_ceiling``
        (1 - noise variance / raw variance: what a perfect denoiser would keep).
    """
    activity = movies.moving_average.std(axis=0)
    top = activity >= np.quantile(activity, 1 - TOP_FRACTION)
    raw = movies.raw[:, top].astype(np.float64)
    raw_var = float(raw.var(axis=0).sum())
    noise_var = float((np.diff(raw, axis=0).var(axis=0) / 2).sum())
    return {
        "kept_denoised": float(movies.denoised[:, top].astype(np.float64).var(axis=0).sum())
        / raw_var,
        "kept_ma": float(movies.moving_average[:, top].astype(np.float64).var(axis=0).sum())
        / raw_var,
        "kept_ceiling": 1 - noise_var / raw_var,
    }


# -- figures -------------------------------------------------------------------------------


def pick_frames(movies: Movies) -> dict[str, int]:
    """Frames shown: quiet, strongest activity, middle.

    Activity of a frame is the spatial mean of (moving average - mean image); the first and
    last two frames (where the moving average is one-sided) are not candidates.
    """
    ma = movies.moving_average
    n = ma.shape[0]
    act = (ma - ma.mean(axis=0, keepdims=True)).mean(axis=(1, 2))
    lo, hi = (MA_WIDTH // 2, n - MA_WIDTH // 2) if n > 2 * MA_WIDTH else (0, n)
    return {
        "quiet": lo + int(np.argmin(act[lo:hi])),
        "active": lo + int(np.argmax(act[lo:hi])),
        "middle": n // 2,
    }


def _show(ax: Any, img: np.ndarray, lim: tuple[float, float], title: str) -> None:
    ax.imshow(img, cmap="gray", vmin=lim[0], vmax=lim[1], interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def overview_figure(movies: Movies, name: str, path: Path) -> None:
    """Save the grid: columns raw | MA | calmdown | prior, rows mean image and three frames.

    Parameters
    ----------
    movies : Movies
        The recording's movies, with ``frames`` from :func:`pick_frames`.
    name : str
        Recording name for the figure title.
    path : Path
        PNG to write.
    """
    cols = [
        ("raw", movies.raw),
        (f"moving average ({MA_WIDTH})", movies.moving_average),
        ("calmdown denoised", movies.denoised),
        ("calmdown prior only (context)", movies.prior),
    ]
    _, h, w = movies.raw.shape
    rows = 1 + len(movies.frames)
    size = 3.2
    fig, axes = plt.subplots(
        rows,
        len(cols),
        figsize=(len(cols) * size, rows * size * h / w + 0.8),
        squeeze=False,
        layout="constrained",
    )
    mean_imgs = [m.mean(axis=0) for _, m in cols]
    lim = tuple(np.percentile(mean_imgs[0], [1, 99.5]))
    for j, (label, _) in enumerate(cols):
        _show(axes[0, j], mean_imgs[j], lim, f"{label}\nmean image")
    for i, (kind, t) in enumerate(movies.frames.items(), start=1):
        lim = tuple(np.percentile(movies.denoised[t], [1, 99.8]))
        for j, (label, m) in enumerate(cols):
            _show(axes[i, j], m[t], lim, f"{label}\nframe {t} ({kind})")
    fig.suptitle(f"{name}  (same colour limits along a row)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def zoom_figure(movies: Movies, name: str, path: Path) -> None:
    """Save a crop around the most active pixel over consecutive frames (raw / MA / calmdown).

    Parameters
    ----------
    movies : Movies
        The recording's movies, with ``frames`` from :func:`pick_frames`.
    name : str
        Recording name for the figure title.
    path : Path
        PNG to write.
    """
    n, h, w = movies.raw.shape
    activity = movies.moving_average.std(axis=0)
    cy, cx = np.unravel_index(int(np.argmax(activity)), activity.shape)
    y0 = int(np.clip(cy - ZOOM_SIZE // 2, 0, max(0, h - ZOOM_SIZE)))
    x0 = int(np.clip(cx - ZOOM_SIZE // 2, 0, max(0, w - ZOOM_SIZE)))
    nf = min(ZOOM_FRAMES, n)
    t0 = int(np.clip(movies.frames["active"] - nf // 2, 0, n - nf))
    sl = (slice(t0, t0 + nf), slice(y0, y0 + ZOOM_SIZE), slice(x0, x0 + ZOOM_SIZE))
    rows = [
        ("raw", movies.raw[sl]),
        (f"MA ({MA_WIDTH})", movies.moving_average[sl]),
        ("calmdown", movies.denoised[sl]),
    ]
    lim = tuple(np.percentile(rows[2][1], [1, 99.8]))
    fig, axes = plt.subplots(
        len(rows), nf, figsize=(nf * 1.6, len(rows) * 1.75), squeeze=False, layout="constrained"
    )
    for i, (label, crop) in enumerate(rows):
        for j in range(nf):
            _show(axes[i, j], crop[j], lim, f"{label} t={t0 + j}")
    fig.suptitle(
        f"{name}: {ZOOM_SIZE}x{ZOOM_SIZE} crop at y={y0}, x={x0} around the most active pixel "
        f"({cy}, {cx})",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- one recording -------------------------------------------------------------------------


def run_recording(path: Path, key: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Train, denoise, score and plot one recording.

    Parameters
    ----------
    path : Path
        Movie file.
    key : str or None
        HDF5 dataset.
    args : argparse.Namespace
        Command-line options (``budget``, ``seed``, ``threads``, ``out``).

    Returns
    -------
    dict
        One table row: noise model, training, calibration, speed and quality numbers.
    """
    cfg = calmdown.make_config(time_budget_s=args.budget, seed=args.seed, threads=args.threads)
    t0 = time.perf_counter()
    prep = calmdown.prepare(path, cfg, key=key)
    prepare_s = time.perf_counter() - t0
    model = calmdown.train(path, config=cfg, prepared=prep)
    t0 = time.perf_counter()
    chunks = list(calmdown.iter_apply(model, path, prepared=prep))
    infer_s = time.perf_counter() - t0
    n = prep.reader.shape[0]
    raw = np.asarray(prep.reader.read(0, n), dtype=np.float32)
    movies = Movies(
        raw=raw,
        moving_average=uniform_filter1d(raw, MA_WIDTH, axis=0, mode="nearest"),
        denoised=np.concatenate([c.denoised for c in chunks]).astype(np.float32),
        prior=np.concatenate([c.prior for c in chunks]).astype(np.float32),
    )
    movies.frames = pick_frames(movies)
    noise = model.noise
    noise_stats = noise_correlations(raw)
    res_den = residual_check(raw, movies.denoised, noise_stats["noise_sd"])
    res_ma = residual_check(raw, movies.moving_average, noise_stats["noise_sd"])
    row: dict[str, Any] = {
        "recording": path.name,
        "shape": list(raw.shape),
        "gain": noise.gain,
        "offset": noise.offset,
        "read_noise": noise.read_noise,
        "photons_per_pixel": noise.photons_per_pixel,
        "neighbour_corr_y": noise.neighbour_correlation[0],
        "neighbour_corr_x": noise.neighbour_correlation[1],
        "variance_ratio": noise.variance_ratio,
        "noise_source": noise.source,
        "raw_min": float(raw.min()),
        "frac_zero": float(np.mean(raw <= 0)),
        "frac_below_offset": float(np.mean(raw < noise.offset)),
        "prepare_s": prepare_s,
        "train_s": model.training["seconds"],
        "steps": model.training["steps"],
        "stopped_because": model.training["stopped_because"],
        "device": model.training.get("device"),
        "coverage90": model.heldout["coverage"],
        "pit_ks": model.heldout["pit_ks"],
        "infer_fps": n / infer_s,
        "wobble_raw": wobble_proxy(raw),
        "wobble_ma": wobble_proxy(movies.moving_average),
        "wobble_denoised": wobble_proxy(movies.denoised),
        **noise_stats,
        "resid_t": res_den["t"],
        "resid_x": res_den["x"],
        "resid_sd_ratio": res_den["sd_ratio"],
        "resid_ma_t": res_ma["t"],
        "resid_ma_x": res_ma["x"],
        "resid_ma_sd_ratio": res_ma["sd_ratio"],
        **activity_kept(movies),
        "frames_shown": movies.frames,
    }
    stem = path.stem
    overview_figure(movies, path.name, args.out / f"{stem}.png")
    zoom_figure(movies, path.name, args.out / f"{stem}_zoom.png")
    return row


# -- table ---------------------------------------------------------------------------------

#: (row key, column header, format) of the printed table.
TABLE: list[tuple[str, str, str]] = [
    ("gain", "gain", ".2f"),
    ("offset", "offset", ".1f"),
    ("read_noise", "read", ".1f"),
    ("photons_per_pixel", "ph/px", ".2f"),
    ("neighbour_corr_x", "nbr_x", ".2f"),
    ("neighbour_corr_y", "nbr_y", ".2f"),
    ("variance_ratio", "vratio", ".2f"),
    ("frac_zero", "zero%", ".2%"),
    ("train_s", "train_s", ".0f"),
    ("steps", "steps", "d"),
    ("stopped_because", "stop", ""),
    ("coverage90", "cov90", ".3f"),
    ("pit_ks", "pit_ks", ".3f"),
    ("infer_fps", "fps", ".0f"),
    ("wobble_raw", "wob_raw", ".1f"),
    ("wobble_ma", "wob_ma", ".1f"),
    ("wobble_denoised", "wob_cd", ".1f"),
    ("noise_t", "noise_t", ".3f"),
    ("resid_t", "res_t", ".3f"),
    ("resid_ma_t", "resMA_t", ".3f"),
    ("noise_x", "noise_x", ".3f"),
    ("resid_x", "res_x", ".3f"),
    ("resid_ma_x", "resMA_x", ".3f"),
    ("resid_sd_ratio", "res_sd", ".2f"),
    ("kept_denoised", "kept_cd", ".3f"),
    ("kept_ma", "kept_ma", ".3f"),
    ("kept_ceiling", "kept_max", ".3f"),
]

LEGEND = """\
gain/offset/read: fitted noise model (ADU/photon, ADU, ADU); ph/px: median photons per pixel
per frame; nbr_x/y: fitted noise neighbour correlation; vratio: noise variance ratio; zero%:
raw values <= 0; cov90/pit_ks: held-out calibration (0.9 / 0 ideal); fps: inference frames/s;
wob_*: wobble proxy (ADU) of raw / moving average / calmdown; noise_t, noise_x: lag-1 temporal
and x-neighbour correlation of the raw noise (from temporal differences); res_t/res_x: the same
for raw - calmdown (close to noise_* = only noise removed), resMA_*: for raw - moving average
(resMA_t = -0.30 from the filter alone on white noise, so it says little about signal);
res_sd: sd(raw - calmdown) / noise sd; kept_*: temporal variance kept in the 5 % most active
pixels (calmdown, moving average, and the ceiling 1 - noise var / raw var)."""


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, str) or not spec:
        return str(value)
    return format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print one row per recording with the columns of :data:`TABLE`."""
    cells = [[_fmt(r[k], spec) for k, _, spec in TABLE] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(TABLE)]
    name_w = max(len("recording"), *(len(r["recording"]) for r in rows))
    head = f"{'recording':<{name_w}} " + " ".join(
        f"{h:>{wd}}" for (_, h, _), wd in zip(TABLE, widths, strict=True)
    )
    print(head)
    print("-" * len(head))
    for r, c in zip(rows, cells, strict=True):
        print(
            f"{r['recording']:<{name_w}} "
            + " ".join(f"{v:>{wd}}" for v, wd in zip(c, widths, strict=True))
        )
    print(LEGEND)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", type=float, default=180.0, help="training seconds per recording"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=REPO.parent / "shared" / "data", help="recordings"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "real",
        help="folder for the figures and real_data.json",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    parser.add_argument(
        "--only", nargs="+", default=None, help="file names to run (default: all found)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fname, key in RECORDINGS:
        if args.only is not None and fname not in args.only:
            continue
        path = args.data_dir / fname
        if not path.exists():
            print(f"skipping {fname}: not found in {args.data_dir}")
            continue
        print(f"{fname}: training {args.budget:g} s ...", flush=True)
        rows.append(run_recording(path, key, args))
    if not rows:
        raise SystemExit(f"no recordings found in {args.data_dir}")
    print()
    print(f"training budget {args.budget:g} s per recording")
    print_table(rows)
    out_json = args.out / "real_data.json"
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out_json.write_text(json.dumps({"args": options, "rows": rows}, indent=2, default=float))
    print(f"wrote {out_json} and figures in {args.out}")


if __name__ == "__main__":
    main()
