"""Ground-truth-free checks of a denoised movie, computed in one streamed pass.

Everything here works in photon units on consecutive chunks of frames and keeps only per-pixel
sums (and a few frames of history), so memory does not grow with the length of the movie.

Definitions (the report states them in words too):

* **Quiet pixels.** Per pixel, the temporal variance of the raw movie within blocks of
  ``block`` frames (which removes bleaching and slow drift) is compared with the noise variance
  measured on the same pixel from differences of consecutive frames, ``mean((x[t+1]-x[t])**2)/2``.
  Calcium signals are slow, so differences hold noise only, and for pure noise the ratio ``R`` is
  1 with a standard deviation of ``1/sqrt(dof)`` whatever the photon level. A pixel is quiet
  when neither ``R`` averaged over its 3 x 3 neighbourhood nor ``R`` of the Gaussian-smoothed
  (sigma 2 px) movie exceeds 1 by two standard deviations: the raw data show no activity there.
* **Hallucination ratio** ``H``. On quiet pixels, the block temporal variance of the smoothed
  (sigma 2 px) denoised movie divided by that of the smoothed raw movie. Any averaging of the
  data (a moving average, a mean image, a denoiser that only combines data with non-negative
  weights) has ``H <= 1``; the raw movie itself has ``H = 1``. ``H > 1`` means the denoised movie
  has more spatially coherent time-varying structure than the data, where the data show none:
  it was invented.
* **Wobble score.** On quiet pixels, the RMS frame-to-frame change of the fine structure (the
  spatial high-pass ``movie - gaussian(movie, 2 px)``) of the denoised movie, divided by the same
  quantity for a 5-frame moving average of the raw movie. Real fine-scale changes count in both,
  so it is an upper bound on the denoiser's own wobble relative to the moving average's noise.
* **Residual check.** ``(raw - denoised) / sd_noise`` should be white: its autocorrelation at
  non-zero lags in time and space should be about zero. Positive correlation means signal was
  removed with the noise.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "EventCandidate",
    "EventFinder",
    "ResidualStats",
    "TemporalStats",
    "TemporalSummary",
    "hallucination_check",
    "quiet_pixels",
    "wobble_score",
]

SMOOTH_SIGMA = 2.0
"""Spatial scale (px) of the coherent-structure and fine-structure filters."""


def _smooth(frames: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(frames, sigma=(0.0, sigma, sigma), mode="reflect")


@dataclass
class TemporalSummary:
    """Per-pixel temporal statistics of a raw and a denoised movie (photon units).

    Attributes
    ----------
    var_raw, var_den : ndarray
        Temporal variance within blocks (pooled over blocks), raw and denoised.
    var_raw_s, var_den_s : ndarray
        The same for the movies smoothed in space (Gaussian, ``sigma`` px).
    noise_raw, noise_raw_s : ndarray
        Noise variance from consecutive differences, raw and smoothed raw.
    wobble_den, wobble_ma : ndarray
        Mean square frame-to-frame change of the fine structure: denoised, and the raw
        movie's 5-frame moving average.
    dof : int
        Degrees of freedom of the block variances (frames minus blocks).
    n_frames : int
        Frames seen.
    sigma : float
        Spatial scale used.
    """

    var_raw: np.ndarray
    var_den: np.ndarray
    var_raw_s: np.ndarray
    var_den_s: np.ndarray
    noise_raw: np.ndarray
    noise_raw_s: np.ndarray
    wobble_den: np.ndarray
    wobble_ma: np.ndarray
    dof: int
    n_frames: int
    sigma: float = SMOOTH_SIGMA


class TemporalStats:
    """Accumulate :class:`TemporalSummary` over consecutive chunks of frames.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` of the frames.
    block : int
        Frames per block for the detrended variances.
    sigma : float
        Spatial scale (px) of the smoothing and of the fine-structure high-pass.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> raw = rng.poisson(2.0, (64, 16, 16)).astype(np.float32)
    >>> stats = TemporalStats((16, 16))
    >>> stats.add(raw, np.full_like(raw, 2.0))
    >>> float(stats.finish().var_den.max())
    0.0
    """

    def __init__(self, shape: tuple[int, int], *, block: int = 32, sigma: float = SMOOTH_SIGMA):
        self.shape = tuple(shape)
        self.block = int(block)
        self.sigma = float(sigma)
        z = np.zeros(self.shape, np.float64)
        # Four series: raw, denoised, smoothed raw, smoothed denoised.
        self._s1 = [z.copy() for _ in range(4)]
        self._s2 = [z.copy() for _ in range(4)]
        self._ss = [z.copy() for _ in range(4)]
        self._n_block = 0
        self._dof = 0
        self._d2 = [z.copy(), z.copy()]
        self._n_diff = 0
        self._wob_den = z.copy()
        self._n_wob_den = 0
        self._wob_ma = z.copy()
        self._n_wob_ma = 0
        self._frames = 0
        self._tail_x: np.ndarray | None = None  # last frame of raw and smoothed raw
        self._tail_xs: np.ndarray | None = None
        self._tail_hp_den: np.ndarray | None = None  # last frame of high-passed denoised
        self._tail_hp_raw = np.zeros((0, *self.shape), np.float32)  # last 5 high-passed raw

    def add(self, raw: np.ndarray, denoised: np.ndarray) -> None:
        """Add the next consecutive frames (photon units, shape ``(n, Y, X)``)."""
        x = np.asarray(raw, np.float32)
        d = np.asarray(denoised, np.float32)
        if x.shape != d.shape or x.shape[1:] != self.shape:
            raise ValueError(f"raw {x.shape} and denoised {d.shape} must be (n, *{self.shape})")
        if x.shape[0] == 0:
            return
        xs = _smooth(x, self.sigma)
        ds = _smooth(d, self.sigma)
        self._add_blocks((x, d, xs, ds))
        # Noise references: consecutive differences of raw and smoothed raw.
        for i, (series, tail) in enumerate(((x, self._tail_x), (xs, self._tail_xs))):
            full = series if tail is None else np.concatenate([tail[None], series])
            diff = np.diff(full, axis=0)
            self._d2[i] += np.einsum("tyx,tyx->yx", diff, diff, dtype=np.float64)
            if i == 0:
                n_new = diff.shape[0]
        self._n_diff += n_new
        self._tail_x, self._tail_xs = x[-1].copy(), xs[-1].copy()
        # Fine structure: frame-to-frame change of the high-pass.
        hp_den = d - ds
        full = (
            hp_den
            if self._tail_hp_den is None
            else np.concatenate([self._tail_hp_den[None], hp_den])
        )
        diff = np.diff(full, axis=0)
        self._wob_den += np.einsum("tyx,tyx->yx", diff, diff, dtype=np.float64)
        self._n_wob_den += diff.shape[0]
        self._tail_hp_den = hp_den[-1].copy()
        hp_raw = np.concatenate([self._tail_hp_raw, x - xs])
        if hp_raw.shape[0] > 5:
            # Change of the 5-frame moving average between t and t + 1: (x[t+3] - x[t-2]) / 5.
            dma = (hp_raw[5:] - hp_raw[:-5]) / 5.0
            self._wob_ma += np.einsum("tyx,tyx->yx", dma, dma, dtype=np.float64)
            self._n_wob_ma += dma.shape[0]
        self._tail_hp_raw = hp_raw[-5:].copy()
        self._frames += x.shape[0]

    def _add_blocks(self, series: tuple[np.ndarray, ...]) -> None:
        n = series[0].shape[0]
        i = 0
        while i < n:
            take = min(self.block - self._n_block, n - i)
            for k, s in enumerate(series):
                part = s[i : i + take].astype(np.float64)
                self._s1[k] += part.sum(axis=0)
                self._s2[k] += np.einsum("tyx,tyx->yx", part, part)
            self._n_block += take
            i += take
            if self._n_block == self.block:
                self._close_block()

    def _close_block(self) -> None:
        if self._n_block >= 2:
            for k in range(4):
                self._ss[k] += self._s2[k] - self._s1[k] ** 2 / self._n_block
            self._dof += self._n_block - 1
        for k in range(4):
            self._s1[k][:] = 0.0
            self._s2[k][:] = 0.0
        self._n_block = 0

    def finish(self) -> TemporalSummary:
        """Close the last block and return the statistics."""
        self._close_block()
        dof = max(self._dof, 1)
        nd = max(self._n_diff, 1)
        var = [np.maximum(ss / dof, 0.0) for ss in self._ss]
        return TemporalSummary(
            var_raw=var[0],
            var_den=var[1],
            var_raw_s=var[2],
            var_den_s=var[3],
            noise_raw=self._d2[0] / (2 * nd),
            noise_raw_s=self._d2[1] / (2 * nd),
            wobble_den=self._wob_den / max(self._n_wob_den, 1),
            wobble_ma=self._wob_ma / max(self._n_wob_ma, 1),
            dof=self._dof,
            n_frames=self._frames,
            sigma=self.sigma,
        )


def quiet_pixels(summary: TemporalSummary, *, z: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixels where the raw movie shows no activity beyond noise.

    Parameters
    ----------
    summary : TemporalSummary
        From :meth:`TemporalStats.finish`.
    z : float
        A pixel is active when its variance ratio exceeds 1 by ``z`` standard deviations.

    Returns
    -------
    quiet : ndarray of bool
        ``(Y, X)``.
    activity : ndarray
        The larger of the two z-scores (pixel scale over 3 x 3, smoothed scale), per pixel.
    """
    sd = 1.0 / np.sqrt(max(summary.dof, 1))
    ratio = summary.var_raw / np.maximum(summary.noise_raw, 1e-12)
    ratio_s = summary.var_raw_s / np.maximum(summary.noise_raw_s, 1e-12)
    # The mean of 9 independent ratios has a third of the standard deviation.
    z_pix = (ndimage.uniform_filter(ratio, 3, mode="nearest") - 1.0) / (sd / 3.0)
    z_s = (ratio_s - 1.0) / sd
    activity = np.maximum(z_pix, z_s)
    return activity < z, activity


def hallucination_check(
    summary: TemporalSummary, quiet: np.ndarray, *, min_quiet: int = 50
) -> dict[str, object]:
    """Check whether the denoised movie varies over time where the raw data show no activity.

    Parameters
    ----------
    summary : TemporalSummary
        Statistics of the raw and denoised movies.
    quiet : ndarray of bool
        From :func:`quiet_pixels`.
    min_quiet : int
        Fewer quiet pixels than this (or than 1 % of the field) give ``verdict="unknown"``.

    Returns
    -------
    dict
        ``ratio`` (``H``: coherent temporal variance of the denoised over the raw's, on quiet
        pixels), ``ratio_pixel`` (the same without smoothing), ``hot_fraction`` (quiet pixels
        whose local ``H`` exceeds 1), ``quiet_fraction``, ``map`` (per-pixel ``H``, NaN off the
        quiet pixels), and ``verdict`` (``"pass"``, ``"warn"``, ``"fail"`` or ``"unknown"``) with
        ``message`` in plain words.
    """
    n_quiet = int(quiet.sum())
    out: dict[str, object] = {"quiet_fraction": float(quiet.mean()), "n_quiet": n_quiet}
    h_map = summary.var_den_s / np.maximum(summary.var_raw_s, 1e-12)
    local = ndimage.uniform_filter(
        np.where(quiet, summary.var_den_s, 0.0), 5, mode="nearest"
    ) / np.maximum(ndimage.uniform_filter(np.where(quiet, summary.var_raw_s, 0.0), 5), 1e-12)
    out["map"] = np.where(quiet, h_map, np.nan)
    if n_quiet < max(min_quiet, 0.01 * quiet.size):
        out.update(
            ratio=float("nan"),
            ratio_pixel=float("nan"),
            hot_fraction=float("nan"),
            verdict="unknown",
            message=(
                f"Only {n_quiet} pixels show no activity in the raw data: too few to check for "
                "invented structure. A longer recording, or one with background, allows the check."
            ),
        )
        return out
    ratio = float(summary.var_den_s[quiet].sum() / max(summary.var_raw_s[quiet].sum(), 1e-12))
    ratio_pix = float(summary.var_den[quiet].sum() / max(summary.var_raw[quiet].sum(), 1e-12))
    # A local ratio is the ratio of two sums over 5 x 5 pixels; allow for its sampling error.
    hot = float(np.mean(local[quiet] > 1.0 + max(0.1, 4.0 * np.sqrt(2.0 / max(summary.dof, 1)))))
    out.update(ratio=ratio, ratio_pixel=ratio_pix, hot_fraction=hot)
    pct = f"{100 * out['quiet_fraction']:.0f} %"
    if ratio > 1.0 or hot > 0.05:
        where = (
            f"on {100 * hot:.0f} % of them locally"
            if ratio <= 1.0
            else f"{ratio:.2f} times the raw data's, overall"
        )
        out["verdict"] = "fail"
        out["message"] = (
            f"FAIL: where the raw data show no activity ({pct} of the pixels), the denoised "
            "movie fluctuates over time at the scale of cells more than the raw data do "
            f"({where}). "
            "No averaging of the data can do that: the denoiser adds time-varying structure "
            "that is not in the recording. Do not trust its frame-to-frame detail there "
            "(see the map)."
        )
    elif ratio > 0.5:
        out["verdict"] = "warn"
        out["message"] = (
            f"CAUTION: where the raw data show no activity ({pct} of the pixels), the denoised "
            f"movie keeps {100 * ratio:.0f} % of the raw data's coherent temporal variance: it "
            "invents nothing beyond the noise, but passes much of it on at the scale of cells."
        )
    else:
        out["verdict"] = "pass"
        out["message"] = (
            f"PASS: where the raw data show no activity ({pct} of the pixels), the denoised movie "
            f"keeps {100 * ratio:.0f} % of the raw data's temporal variance at the scale of cells "
            f"({100 * ratio_pix:.1f} % pixel by pixel) and nowhere locally more than the raw data "
            "have: no sign of invented time-varying structure."
        )
    return out


def wobble_score(summary: TemporalSummary, quiet: np.ndarray) -> tuple[float, np.ndarray]:
    """Fine-structure frame-to-frame change of the denoised movie, against a moving average's.

    Returns
    -------
    score : float
        ``sqrt(sum_quiet wobble_den / sum_quiet wobble_ma)``; NaN without quiet pixels.
    ratio_map : ndarray
        The same ratio per pixel (every pixel; active pixels include real change).
    """
    ratio_map = np.sqrt(summary.wobble_den / np.maximum(summary.wobble_ma, 1e-12))
    if not np.any(quiet):
        return float("nan"), ratio_map
    score = float(
        np.sqrt(summary.wobble_den[quiet].sum() / max(summary.wobble_ma[quiet].sum(), 1e-12))
    )
    return score, ratio_map


@dataclass
class ResidualStats:
    """Autocorrelation of standardised residuals ``(raw - denoised) / sd_noise``, streamed.

    Parameters
    ----------
    max_lag : int
        Largest lag (frames, and pixels along y and x).
    """

    max_lag: int = 5
    _s1: float = 0.0
    _s2: float = 0.0
    _n: int = 0
    _expected: float = 0.0
    _lag_t: np.ndarray = field(init=False)
    _n_t: np.ndarray = field(init=False)
    _lag_y: np.ndarray = field(init=False)
    _n_y: np.ndarray = field(init=False)
    _lag_x: np.ndarray = field(init=False)
    _n_x: np.ndarray = field(init=False)
    _tail: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("_lag_t", "_n_t", "_lag_y", "_n_y", "_lag_x", "_n_x"):
            setattr(self, name, np.zeros(self.max_lag + 1, np.float64))

    def add(
        self,
        raw: np.ndarray,
        denoised: np.ndarray,
        noise_var: np.ndarray,
        posterior_var: np.ndarray | None = None,
    ) -> None:
        """Add consecutive frames (photon units); ``noise_var`` at the denoised level."""
        r = ((raw - denoised) / np.sqrt(np.maximum(noise_var, 1e-12))).astype(np.float32)
        self._s1 += float(r.sum(dtype=np.float64))
        self._s2 += float(np.einsum("tyx,tyx->", r, r, dtype=np.float64))
        self._n += r.size
        if posterior_var is not None:
            frac = 1.0 - posterior_var / np.maximum(noise_var, 1e-12)
            self._expected += float(frac.sum(dtype=np.float64))
        else:
            self._expected += float(r.size)
        h, w = r.shape[1:]
        for k in range(1, self.max_lag + 1):
            if k < h:
                a, b = r[:, k:], r[:, :-k]
                self._lag_y[k] += float(np.einsum("tyx,tyx->", a, b, dtype=np.float64))
                self._n_y[k] += a.size
            if k < w:
                a, b = r[:, :, k:], r[:, :, :-k]
                self._lag_x[k] += float(np.einsum("tyx,tyx->", a, b, dtype=np.float64))
                self._n_x[k] += a.size
        full = r if self._tail is None else np.concatenate([self._tail, r])
        n_new = r.shape[0]
        for k in range(1, self.max_lag + 1):
            if full.shape[0] <= k:
                continue
            # Pairs (t - k, t) whose later frame t is new.
            later = full[max(k, full.shape[0] - n_new) :]
            earlier = full[max(k, full.shape[0] - n_new) - k : full.shape[0] - k]
            self._lag_t[k] += float(np.einsum("tyx,tyx->", later, earlier, dtype=np.float64))
            self._n_t[k] += later.size
        self._tail = full[-self.max_lag :].copy()

    def finish(self) -> dict[str, object]:
        """Autocorrelations (lag 1..max_lag) in time, y and x, with the white-noise band."""
        n = max(self._n, 1)
        mean = self._s1 / n
        var = max(self._s2 / n - mean**2, 1e-12)

        def corr(sums: np.ndarray, counts: np.ndarray) -> list[float]:
            return [
                float((sums[k] / counts[k] - mean**2) / var) if counts[k] else float("nan")
                for k in range(1, self.max_lag + 1)
            ]

        return {
            "lags": list(range(1, self.max_lag + 1)),
            "time": corr(self._lag_t, self._n_t),
            "y": corr(self._lag_y, self._n_y),
            "x": corr(self._lag_x, self._n_x),
            "band": float(2.0 / np.sqrt(n)),
            "variance": float(self._s2 / n),
            "expected_variance": float(self._expected / n),
            "mean": float(mean),
            "n": self._n,
        }


@dataclass(order=True)
class EventCandidate:
    """A connected space-time region where the raw data disagree with the prior.

    Attributes
    ----------
    z : float
        Summed residual ``raw - prior`` over the region, in noise standard deviations.
    t_start, t_stop : int
        Frames (``t_stop`` exclusive).
    y, x : int
        Centre (pixels).
    n_pixels, n_voxels : int
        Pixels covered, pixel-frames covered.
    p_max : float
        Largest surprise probability in the region.
    kept : float
        Fraction of ``raw - prior`` the denoised movie keeps over the region.
    crops : dict
        ``raw``, ``denoised``, ``prior``: ``(n, h, w)`` crops (ADU) around the region, over
        ``frames``; only for the top candidates.
    frames : list of int
        Frame indices of the crops.
    box : tuple of int
        ``(y0, y1, x0, x1)`` of the crops.
    """

    z: float
    t_start: int = field(compare=False)
    t_stop: int = field(compare=False)
    y: int = field(compare=False)
    x: int = field(compare=False)
    n_pixels: int = field(compare=False)
    n_voxels: int = field(compare=False)
    p_max: float = field(compare=False)
    kept: float = field(compare=False)
    crops: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    frames: list[int] = field(default_factory=list, compare=False)
    box: tuple[int, int, int, int] = field(default=(0, 0, 0, 0), compare=False)


class EventFinder:
    """Connected space-time regions of high surprise probability, streamed over chunks.

    Regions are labelled (26-connectivity) on a rolling buffer of frames; a region is scored
    once ``lookahead`` frames after its first frame are available, so regions shorter than that
    are seen whole, and longer ones by their first ``lookahead`` frames.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)``.
    threshold : float
        Surprise probability above which a pixel-frame belongs to a region.
    lookahead : int
        Frames after a region's start that are examined.
    keep : int
        Candidates (highest ``z``) kept with crops.
    table : int
        Candidates kept for the table.
    crop : int
        Side of the crops, pixels.
    strip_frames : int
        Most frames per filmstrip.
    margin : int
        Frames shown before and after a region.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        threshold: float = 0.5,
        lookahead: int = 64,
        keep: int = 6,
        table: int = 30,
        crop: int = 24,
        strip_frames: int = 10,
        margin: int = 3,
    ) -> None:
        self.shape = tuple(shape)
        self.threshold = threshold
        self.lookahead = lookahead
        self.keep = keep
        self.table = table
        self.crop = crop
        self.strip_frames = strip_frames
        self.margin = margin
        self.n_found = 0
        self._top: list[EventCandidate] = []  # min-heap by z, with crops
        self._rows: list[EventCandidate] = []  # min-heap by z, table rows
        self._b0 = 0
        self._buf: dict[str, np.ndarray] = {}
        self._done = 0  # frames whose regions starting there have been scored

    def add(
        self,
        start: int,
        *,
        p_surprise: np.ndarray,
        raw: np.ndarray,
        denoised: np.ndarray,
        prior: np.ndarray,
        noise_sd: np.ndarray,
        gain: float,
    ) -> None:
        """Add consecutive frames starting at ``start`` (raw, denoised, prior in ADU)."""
        arrays = {
            "p": p_surprise,
            "raw": raw,
            "denoised": denoised,
            "prior": prior,
            "sd": noise_sd * gain,
        }
        if not self._buf:
            self._b0 = start
            self._buf = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
        else:
            if start != self._b0 + self._buf["p"].shape[0]:
                raise ValueError("EventFinder.add needs consecutive frames")
            self._buf = {
                k: np.concatenate([self._buf[k], np.asarray(v, np.float32)])
                for k, v in arrays.items()
            }
        self._process(final=False)

    def finish(self) -> tuple[list[EventCandidate], list[EventCandidate]]:
        """Score the remaining regions; return (top candidates with crops, table rows)."""
        if self._buf:
            self._process(final=True)
        top = sorted(self._top, reverse=True)
        rows = sorted(self._rows, reverse=True)
        return top, rows

    def _process(self, *, final: bool) -> None:
        b1 = self._b0 + self._buf["p"].shape[0]
        ready = b1 if final else b1 - self.lookahead
        if ready <= self._done:
            return
        lo = max(self._b0, self._done - self.lookahead)
        mask = self._buf["p"][lo - self._b0 :] > self.threshold
        if mask.any():
            labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
            for i, sl in enumerate(ndimage.find_objects(labels), start=1):
                if sl is None:
                    continue
                t0 = sl[0].start + lo
                if not self._done <= t0 < ready:
                    continue
                self._score(labels[sl] == i, sl, lo)
        self._done = ready
        drop = max(0, self._done - self.lookahead - self.margin - self._b0)
        if drop:
            self._buf = {k: v[drop:] for k, v in self._buf.items()}
            self._b0 += drop

    def _score(self, region: np.ndarray, sl: tuple[slice, ...], lo: int) -> None:
        self.n_found += 1
        bt = slice(sl[0].start + lo - self._b0, sl[0].stop + lo - self._b0)
        win = (bt, sl[1], sl[2])
        raw = self._buf["raw"][win][region]
        prior = self._buf["prior"][win][region]
        den = self._buf["denoised"][win][region]
        sd = self._buf["sd"][win][region]
        resid = float(np.sum(raw - prior, dtype=np.float64))
        z = resid / float(np.sqrt(np.sum(sd.astype(np.float64) ** 2)) + 1e-12)
        kept = float(np.sum(den - prior, dtype=np.float64)) / resid if resid else float("nan")
        p = self._buf["p"][win] * region
        wy = p.sum(axis=(0, 2))
        wx = p.sum(axis=(0, 1))
        cy = round(float(np.sum(wy * np.arange(sl[1].start, sl[1].stop)) / max(wy.sum(), 1e-12)))
        cx = round(float(np.sum(wx * np.arange(sl[2].start, sl[2].stop)) / max(wx.sum(), 1e-12)))
        cand = EventCandidate(
            z=z,
            t_start=sl[0].start + lo,
            t_stop=sl[0].stop + lo,
            y=cy,
            x=cx,
            n_pixels=int(region.any(axis=0).sum()),
            n_voxels=int(region.sum()),
            p_max=float(p.max()),
            kept=kept,
        )
        row = EventCandidate(**{k: getattr(cand, k) for k in _ROW_FIELDS})
        _push(self._rows, row, self.table)
        if len(self._top) < self.keep or z > self._top[0].z:
            self._crop(cand)
            _push(self._top, cand, self.keep)

    def _crop(self, cand: EventCandidate) -> None:
        h, w = self.shape
        c = min(self.crop, h, w)
        y0 = int(np.clip(cand.y - c // 2, 0, h - c))
        x0 = int(np.clip(cand.x - c // 2, 0, w - c))
        b1 = self._b0 + self._buf["p"].shape[0]
        f0 = max(self._b0, cand.t_start - self.margin)
        f1 = min(b1, cand.t_stop + self.margin)
        frames = np.unique(np.linspace(f0, f1 - 1, min(self.strip_frames, f1 - f0)).round())
        idx = frames.astype(int) - self._b0
        cand.frames = [int(f) for f in frames]
        cand.box = (y0, y0 + c, x0, x0 + c)
        cand.crops = {
            k: self._buf[k][idx, y0 : y0 + c, x0 : x0 + c].copy()
            for k in ("raw", "denoised", "prior")
        }


_ROW_FIELDS = ("z", "t_start", "t_stop", "y", "x", "n_pixels", "n_voxels", "p_max", "kept")


def _push(heap: list[EventCandidate], item: EventCandidate, size: int) -> None:
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item.z > heap[0].z:
        heapq.heapreplace(heap, item)
