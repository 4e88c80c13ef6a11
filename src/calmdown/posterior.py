"""Bayes: the prior from context, the likelihood from the pixel's own value, the posterior out.

Two steps, both on one chunk of frames in photon units:

1. **Surprise guard.** A point-estimate prior learns that thin processes never flash, and would
   erase a rare event. Pooled over a space-time window, the residual ``x - loc`` of a real
   event is far beyond what the noise allows, even where each pixel's own residual is not. We
   model a window's mean residual as ``0 + noise`` (no surprise) or ``delta + noise`` with
   ``delta`` from a broad slab (a surprise), with small prior odds shared between windows of
   several shapes (a square, the pixel alone, straight lines along which a thin process may
   run: the prior blurs an event it half sees into the process's neighbours, and in a square
   their deficit cancels the event's excess). Where the posterior probability of a surprise
   is high, the prior's location moves by the local residual and its variance grows by that
   estimate's own uncertainty and by the spread of the clean signal over the local frames, so
   the interval widens where the data, not the network, decide. Every window leaves out the
   frame being denoised: the pixel's own value enters only through the likelihood.
2. **Posterior.** Each of the guard's two components (no surprise, surprise) times the
   pixel's likelihood (Gaussian, with the Poisson-Gaussian noise variance taken at the
   component's location), mixed with the surprise probability (:class:`GuardedPosterior`):
   its mean is the denoised value, its quantiles the credible intervals, and the samples are
   drawn from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TypeVar

import numpy as np
import torch

from calmdown import fused
from calmdown.config import GuardConfig

__all__ = [
    "EvidenceWindow",
    "GuardOutput",
    "GuardedPosterior",
    "average_in_time",
    "evidence_windows",
    "evidence_zscores",
    "gaussian_posterior",
    "guard_halo",
    "guarded_posterior",
    "predictive_pit",
    "surprise_guard",
]


def guard_halo(cfg: GuardConfig) -> int:
    """Frames on each side the guard needs beyond the frames it outputs."""
    if not cfg.enabled:
        return 0
    return max(w.frames for w in evidence_windows(cfg)) // 2 + cfg.local_frames // 2


def _window_sum_1d(x: torch.Tensor, dim: int, half: int) -> torch.Tensor:
    """Sum over ``[i - half, i + half]`` along ``dim``, clipped at the ends.

    Each element's sum is the same to the bit wherever the run of elements it sits in
    starts, so a result does not depend on how a movie is cut into chunks and bands (a
    calibration's bins would amplify a last-bit difference into a different interval).
    Along time (``dim`` 0) a running sum in float64, exact for float32 values whose
    exponents span less than 29 bits; a few pixels (``half`` <= 2) as shifted sums added
    in a fixed order; wider spatial windows by one cumulative sum, in float64 for float32
    values (exact likewise: in float32 its rounding depended on the band's first row). On a
    CPU with Numba the running and cumulative sums run as compiled loops (:mod:`calmdown.fused`),
    equal to the bit.
    """
    if half == 0:
        return x
    n = x.shape[dim]
    if dim == 0 and x.dtype == torch.float32:
        return _running_sum(x, half)
    if half <= 2:
        out = x.clone()
        for k in range(1, min(half, n - 1) + 1):
            out.narrow(dim, k, n - k).add_(x.narrow(dim, 0, n - k))
            out.narrow(dim, 0, n - k).add_(x.narrow(dim, k, n - k))
        return out
    if fused.enabled(x):  # the same exact sums as compiled running sums
        return fused.running_sum(x, half, dim)
    # A cumulative sum depends on where the run starts (a band of rows, a chunk) unless it is
    # exact: in float64, as along time, for float32 values.
    y = x.double() if x.dtype == torch.float32 else x
    pad_shape = list(y.shape)
    pad_shape[dim] = half + 1
    lead = y.new_zeros(pad_shape)
    pad_shape[dim] = half
    c = torch.cumsum(torch.cat([lead, y, y.new_zeros(pad_shape)], dim=dim), dim=dim)
    return (c.narrow(dim, 2 * half + 1, n) - c.narrow(dim, 0, n)).to(x.dtype)


def _running_sum(x: torch.Tensor, half: int) -> torch.Tensor:
    """Window sums along the first axis, frame by frame, accumulated in float64."""
    if fused.enabled(x):
        return fused.running_sum(x, half)
    n = x.shape[0]
    out = torch.empty_like(x)
    acc = x[: min(half, n)].sum(dim=0, dtype=torch.float64)
    for t in range(n):
        if t + half < n:
            acc += x[t + half]
        if t - half - 1 >= 0:
            acc -= x[t - half - 1]
        out[t] = acc
    return out


def window_sum(x: torch.Tensor, frames: int, pixels: int) -> torch.Tensor:
    """Sum over a centred (frames, pixels, pixels) window of a (T, Y, X) tensor."""
    out = _window_sum_1d(x, 0, frames // 2)
    out = _window_sum_1d(out, 1, pixels // 2)
    return _window_sum_1d(out, 2, pixels // 2)


def average_in_time(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Mean of a (T, Y, X) tensor over ``frames`` frames centred on each (clipped at the ends)."""
    if frames <= 1:
        return x
    return window_sum(x, frames, 1) / window_count(tuple(x.shape), frames, 1, x.device)


def window_count(
    shape: tuple[int, ...], frames: int, pixels: int, device: torch.device
) -> torch.Tensor:
    """Count the in-bounds elements of each centred window (exact, no summing)."""
    counts = []
    for n, half in zip(shape, (frames // 2, pixels // 2, pixels // 2), strict=True):
        i = torch.arange(n, device=device)
        counts.append((torch.clamp(i + half, max=n - 1) - torch.clamp(i - half, min=0) + 1).float())
    return counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]


def _offset_slices(
    shape: torch.Size | tuple[int, ...], dy: int, dx: int
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index pairs ``dst, src`` of (T, Y, X) tensors with ``dst[:, i, j] <- src[:, i+dy, j+dx]``."""
    h, w = shape[1:]
    dst = (slice(None), slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0)))
    src = (slice(None), slice(max(dy, 0), h - max(-dy, 0)), slice(max(dx, 0), w - max(-dx, 0)))
    return dst, src


@dataclass(frozen=True)
class EvidenceWindow:
    """One shape of space-time window over which the guard pools residuals.

    Attributes
    ----------
    name : str
        What it is, for messages and reports.
    frames : int
        Frames (odd).
    square : int
        Side of a square spatial footprint, or 0 where ``offsets`` give it.
    offsets : tuple of (int, int)
        (dy, dx) of each pixel of a non-square footprint.
    """

    name: str
    frames: int
    square: int = 0
    offsets: tuple[tuple[int, int], ...] = ()

    def holds(self, dy: int, dx: int) -> bool:
        """Whether the footprint holds the pixel at offset ``(dy, dx)`` from its centre."""
        if self.square:
            return max(abs(dy), abs(dx)) <= self.square // 2
        return (dy, dx) in self.offsets

    def own_weight(
        self, dy: int, dx: int, noise_correlation: tuple[float, float] = (0.0, 0.0)
    ) -> float:
        """Weight of a pixel's own residual to take out of the window centred ``(dy, dx)`` away.

        1 where the footprint holds the pixel, plus the noise correlation of the pixel with
        each other value of the footprint: what the pixel's own noise predicts of theirs, so
        that the window's sum in frame ``t`` holds none of it. ``noise_correlation`` is the
        noise model's, between neighbours along y and x; diagonal neighbours take their
        product (registration interpolates along each axis), longer lags none. Raw
        recordings: 1 or 0.
        """
        ry, rx = noise_correlation
        if self.square:
            h = self.square // 2
            footprint = [(a, b) for a in range(-h, h + 1) for b in range(-h, h + 1)]
        else:
            footprint = list(self.offsets)
        weight = 0.0
        for a, b in footprint:
            oy, ox = a + dy, b + dx  # the footprint's pixel relative to the pixel
            if (oy, ox) == (0, 0):
                weight += 1.0
            elif abs(oy) <= 1 and abs(ox) <= 1:
                weight += (ry if oy else 1.0) * (rx if ox else 1.0)
        return weight

    @property
    def one_pixel(self) -> bool:
        """Whether the footprint is its centre alone."""
        return self.square == 1 or (not self.square and self.offsets == ((0, 0),))

    def spatial_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of (T, Y, X) ``x`` over the footprint centred on each pixel (zero outside)."""
        if self.square:
            half = self.square // 2
            return _window_sum_1d(_window_sum_1d(x, 1, half), 2, half)
        if fused.enabled(x):
            return fused.line_sum(x, self.offsets)
        out = torch.zeros_like(x)
        for dy, dx in self.offsets:
            dst, src = _offset_slices(x.shape, dy, dx)
            out[dst] += x[src]
        return out


def evidence_windows(cfg: GuardConfig) -> list[EvidenceWindow]:
    """List the guard's evidence windows: a square, single pixels, and straight lines.

    A rare event on a thin process is diluted in a square window, and the prior, which half
    sees it in the context frames, blurs it into the neighbours, whose deficit then cancels
    the event's excess; a window of the pixel alone or along the process keeps it.
    """
    out = [EvidenceWindow(f"square {cfg.window_pixels} px", cfg.window_frames, cfg.window_pixels)]
    out += [EvidenceWindow("pixel", frames, 1) for frames in cfg.pixel_windows]
    if cfg.line_pixels > 1:
        h = cfg.line_pixels // 2
        for name, (uy, ux) in (
            ("vertical", (1, 0)),
            ("horizontal", (0, 1)),
            ("diagonal", (1, 1)),
            ("antidiagonal", (1, -1)),
        ):
            offsets = tuple((k * uy, k * ux) for k in range(-h, h + 1))
            out.append(EvidenceWindow(f"{name} line", cfg.line_frames, 0, offsets))
    return out


def _shifted_z2(
    sums: tuple[torch.Tensor, ...],
    frames: int,
    dt: int,
    out: tuple[int, int] | None = None,
    *,
    holds_pixel: bool = True,
    own_weight: float = 1.0,
    one_pixel: bool = False,
    first: int = 0,
) -> tuple[slice, torch.Tensor]:
    """z**2 at frames ``t`` in the returned slice, of the window centred at ``t + dt``.

    ``sums`` are the window's space-time sums of residual and variance (of the frames from
    ``first`` on: see :func:`_window_sums`) and the pixel's own residual and variance (of
    every frame). Where the window holds frame ``t``, ``own_weight`` times the
    pixel's own residual is taken out of it (:meth:`EvidenceWindow.own_weight`), and the
    pixel's own variance where the window holds the pixel (``holds_pixel``; a window centred
    on another pixel may not): the statistic holds no noise of the value being denoised. Its
    neighbours' values in frame ``t`` stay, less what its noise predicts of theirs: at an
    event's first frames they are most of the evidence. A window left with no value
    (``one_pixel``: its footprint is its centre alone, and frame ``t`` its only frame) shows
    no surprise. With ``out=(f0, f1)`` only frames ``f0..f1`` are computed, and the slice
    returned counts from ``f0``.
    """
    r_win, v_win, r_own, v_own = sums
    n = r_own.shape[0]
    f0, f1 = out if out is not None else (0, n)
    a, b = max(f0, -dt), min(f1, n - dt)
    r = r_win[a + dt - first : b + dt - first]
    v = v_win[a + dt - first : b + dt - first]
    in_t = abs(dt) <= frames // 2
    holds_t = holds_pixel and in_t
    r = r - own_weight * r_own[a:b] if in_t and own_weight != 0.0 else r.clone()
    v = v - v_own[a:b] if holds_t else v.clone()
    z2 = r.mul_(r).div_(v.clamp_(min=1e-12))
    if holds_t and one_pixel and (n < 2 or frames < 3):
        # Only the pixel's own value was in the window: what is left is rounding error.
        z2.zero_()
    return slice(a - f0, b - f0), z2


def _moved(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[:, i, j] = x[:, i + dy, j + dx]``, zero where that lies outside the frame."""
    out = torch.zeros_like(x)
    dst, src = _offset_slices(x.shape, dy, dx)
    out[dst] = x[src]
    return out


def _time_sums(x: torch.Tensor, frames: int, span: tuple[int, int]) -> torch.Tensor:
    """Sum (T, Y, X) ``x`` over ``frames`` frames centred on each of the frames ``span``.

    Reads only the frames those windows reach; each sum equals that of a run over every frame
    to the bit (the running sum is exact, :func:`_window_sum_1d`).
    """
    s0, s1 = span
    half = frames // 2
    lo, hi = max(0, s0 - half), min(x.shape[0], s1 + half)
    return _window_sum_1d(x[lo:hi], 0, half)[s0 - lo : s1 - lo]


def _window_sums(
    resid: torch.Tensor,
    var: torch.Tensor,
    window: EvidenceWindow,
    span: tuple[int, int] | None = None,
    time_sums: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Return the window's space-time sums of ``resid`` and ``var``, and the pixel's own values.

    The sums are centred on each pixel, in each frame of ``span`` = (s0, s1) (default: every
    frame); the pixel's own value is the one left out in its own frame
    (:func:`_shifted_z2`). Summed along time first, then over the footprint: windows of as
    many frames share their sums along time, kept in ``time_sums`` (keyed by frames; one
    dictionary per ``span``) where given. (Summed over each footprint first, at 512 x 512 the
    six windows' twelve running sums over every frame of a band took half the guard's time.)
    """
    span = span if span is not None else (0, resid.shape[0])
    cache = time_sums if time_sums is not None else {}
    if window.frames not in cache:
        cache[window.frames] = (
            _time_sums(resid, window.frames, span),
            _time_sums(var, window.frames, span),
        )
    r_t, v_t = cache[window.frames]
    return window.spatial_sum(r_t), window.spatial_sum(v_t), resid, var


def evidence_zscores(
    resid: torch.Tensor,
    var: torch.Tensor,
    cfg: GuardConfig,
    windows: Sequence[EvidenceWindow] | None = None,
    *,
    noise_correlation: tuple[float, float] = (0.0, 0.0),
) -> list[torch.Tensor]:
    """z-score of each evidence window's mean residual under no surprise (null sd 1).

    One (T, Y, X) tensor per window of :func:`evidence_windows` (or of ``windows``, some of
    them), centred on each pixel and leaving out the pixel's own value; their spread on
    held-out frames gives the null scales.
    """
    out = []
    for window in evidence_windows(cfg) if windows is None else windows:
        r_win, v_win, r_own, v_own = _window_sums(resid, var, window)
        weight = window.own_weight(0, 0, noise_correlation)
        _, z2 = _shifted_z2(
            (r_win, v_win, r_own, v_own),
            window.frames,
            0,
            own_weight=weight,
            one_pixel=window.one_pixel,
        )
        out.append(torch.sign(r_win - weight * r_own) * torch.sqrt(z2))
    return out


@dataclass
class GuardOutput:
    """Guarded prior and the surprise probability (all (T, Y, X) tensors).

    The guarded prior is a mixture: with probability ``1 - p_surprise`` the prior's own
    ``N(loc - p_surprise * shift, prior var)``, with probability ``p_surprise`` that moved by
    ``shift`` and widened by ``slab_var`` (what the neighbouring frames say). ``loc`` and
    ``var`` are the mixture's mean and variance; ``var`` is the prior's variance plus
    ``guard_var``, what the guard adds where it acts.
    """

    loc: torch.Tensor
    var: torch.Tensor
    p_surprise: torch.Tensor
    guard_var: torch.Tensor
    shift: torch.Tensor
    slab_var: torch.Tensor

    def take(self, index: tuple[slice, ...]) -> GuardOutput:
        """Take the values at ``index`` of every tensor."""
        return GuardOutput(*(getattr(self, f.name)[index] for f in fields(self)))

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Location and variance of the no-surprise component, then of the surprise one."""
        loc0 = self.loc - self.p_surprise * self.shift
        var0 = self.var - self.guard_var
        return loc0, var0, loc0 + self.shift, var0 + self.slab_var


def surprise_guard(
    x: torch.Tensor,
    loc: torch.Tensor,
    prior_var: torch.Tensor,
    noise_var: torch.Tensor,
    cfg: GuardConfig,
    *,
    null_scale: float | Sequence[float] = 1.0,
    frames: slice | None = None,
    noise_correlation: tuple[float, float] = (0.0, 0.0),
) -> GuardOutput:
    """Let the data override the prior where they disagree with it beyond noise.

    The guarded prior of a pixel in frame ``t`` is built without its own value: the
    evidence windows leave it out, and the local residual leaves out its frame-``t`` slice.
    Its neighbours' values in frame ``t`` stay in the evidence windows (at an event's first
    frames they are most of the evidence), less what the pixel's own noise predicts of
    theirs where registration has correlated neighbouring pixels' noise. The pixel's own
    value then enters only through the likelihood (it is not counted twice), and held-out
    residuals grouped by the guarded prior measure its error without selection bias. (At
    78e9ad0 the windows left out the whole frame-``t`` slice; keeping the neighbours moved
    the onset of clear events at 10 photons from 0.42 to 0.46 coverage, the same network.)

    Where the guard acts, the prior is replaced by what the neighbouring frames say: the
    location moves by their mean residual, and the variance grows by that mean's own
    uncertainty and by how much the clean signal varies among those frames (an event's rise
    and decay), so the interval holds the event's course, not only its average.

    Parameters
    ----------
    x : Tensor
        (T, Y, X) observed frames, photon units.
    loc, prior_var : Tensor
        Prior location and (calibrated) variance.
    noise_var : Tensor
        Detector noise variance.
    cfg : GuardConfig
        Windows and prior odds.
    null_scale : float or sequence of float
        Standard deviation of each evidence window's z-score on held-out frames (prior errors
        are correlated, so it exceeds 1), one per :func:`evidence_windows` or one for all;
        z-scores are divided by it.
    frames : slice, optional
        Compute the output for these frames only (``start:stop``, within the input): the
        windows still read every input frame, so frames an output's windows reach must be
        given. The result equals those frames of a run over all of them; the guard's cost then
        follows the frames kept, not the halo read for them.
    noise_correlation : (float, float)
        Correlation of the detector noise between neighbours along y and x (the noise
        model's; 0 in raw recordings).

    Returns
    -------
    GuardOutput
        Tensors of the frames asked for.
    """
    n = x.shape[0]
    f0, f1, _ = (frames or slice(None)).indices(n)
    if not cfg.enabled:
        loc, prior_var = loc[f0:f1], prior_var[f0:f1]
        zero = torch.zeros_like(loc)
        return GuardOutput(loc, prior_var, zero, zero, zero, zero)
    windows = evidence_windows(cfg)
    scales = [null_scale] if isinstance(null_scale, int | float) else list(null_scale)
    if len(scales) == 1:
        scales = scales * len(windows)
    if len(scales) != len(windows):
        raise ValueError(f"{len(scales)} null scales for {len(windows)} evidence windows")
    resid = x - loc
    var = prior_var + noise_var
    rho = cfg.slab_ratio
    # The prior odds are shared between the windows (a Bonferroni split).
    odds = cfg.prior_odds / len(windows)
    base = math.log(odds / (1 - odds)) - 0.5 * math.log1p(rho)
    # Every pixel of a window that detected a surprise is handed to the data: the largest
    # surprise over the windows centred within the local window's frames.
    out_shape = (f1 - f0, *resid.shape[1:])
    log_odds = resid.new_full(out_shape, -math.inf)
    ht, hp = cfg.local_frames // 2, cfg.local_pixels // 2
    gain = 0.5 * rho / (1 + rho)
    compiled = fused.enabled(resid)
    # The windows centred within the local window's frames of the frames asked for.
    centres = (max(0, f0 - ht), min(n, f1 + ht))
    time_sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for window, scale in zip(windows, scales, strict=True):
        sums = _window_sums(resid, var, window, centres, time_sums)
        # For the window centred (dy, dx) away, at [dy + hp, dx + hp]: whether it holds the
        # pixel, and how much of the pixel's own residual its frame-t sum gives back.
        offsets = range(-hp, hp + 1)
        holds = np.array([[window.holds(-dy, -dx) for dx in offsets] for dy in offsets])
        weights = np.array(
            [[window.own_weight(dy, dx, noise_correlation) for dx in offsets] for dy in offsets],
            np.float32,
        )
        if compiled:
            fused.max_z2_log_odds(
                sums,
                window.frames,
                (cfg.local_frames, cfg.local_pixels),
                (f0, f1),
                base,
                gain / scale**2,
                log_odds,
                holds=holds,
                own_weights=weights,
                one_pixel=window.one_pixel,
                first=centres[0],
            )
            continue
        z2 = resid.new_zeros(out_shape)
        for dy in offsets:
            for dx in offsets:
                # The window centred (dy, dx) away; the pixel's own values stay where they
                # are, zero where that window's centre lies outside the frame (no window).
                moved = sums
                if dy or dx:
                    moved = (
                        *(_moved(s, dy, dx) for s in sums[:2]),
                        *(_moved(_moved(s, -dy, -dx), dy, dx) for s in sums[2:]),
                    )
                for dt in range(-ht, ht + 1):
                    span, z2_dt = _shifted_z2(
                        moved,
                        window.frames,
                        dt,
                        (f0, f1),
                        holds_pixel=bool(holds[dy + hp, dx + hp]),
                        own_weight=float(weights[dy + hp, dx + hp]),
                        one_pixel=window.one_pixel,
                        first=centres[0],
                    )
                    torch.maximum(z2[span], z2_dt, out=z2[span])
        torch.maximum(log_odds, base + gain / scale**2 * z2, out=log_odds)
    p = torch.sigmoid(log_odds)
    # Local residual without the frame-t slice: its mean, the mean's variance, and the spread
    # of the clean values around it beyond noise (clipped at zero: biased upward where
    # there is no surprise, which errs on the side of a wider interval where the guard acts).
    # Computed over the frames asked for and the local window's reach around them (the
    # window counts are then clipped where the input ends, as over the whole input).
    a0, a1 = max(0, f0 - ht), min(n, f1 + ht)
    keep = slice(f0 - a0, f1 - a0)
    resid, var = resid[a0:a1], var[a0:a1]
    win = (cfg.local_frames, cfg.local_pixels)
    count = window_count(tuple(resid.shape), *win, resid.device)[keep]
    own = window_count(tuple(resid.shape), 1, cfg.local_pixels, resid.device)[keep]
    m = torch.clamp(count - own, min=1.0)

    def loo_mean(v: torch.Tensor) -> torch.Tensor:
        return (window_sum(v, *win)[keep] - window_sum(v[keep], 1, win[1])) / m

    r_loo, mean_var = loo_mean(resid), loo_mean(var)
    mean_sq = loo_mean(resid * resid)
    spread = torch.clamp(mean_sq - r_loo * r_loo - mean_var, min=0.0)
    shrink = rho / (1 + rho)
    # (The moment-matched location and variance, which the residual correction and the
    # calibration's fits read, keep the order of operations they were fitted with.)
    new_loc = loc[f0:f1] + p * shrink * r_loo
    extra = p * (mean_var / m + spread) + p * (1 - p) * (shrink * r_loo) ** 2
    shift = r_loo.mul_(shrink)
    slab_var = mean_var.div_(m).add_(spread)
    return GuardOutput(new_loc, prior_var[f0:f1] + extra, p, extra, shift, slab_var)


ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def gaussian_posterior(
    x: ArrayT, loc: ArrayT, prior_var: ArrayT, noise_var: ArrayT
) -> tuple[ArrayT, ArrayT]:
    """Posterior mean and variance of a Gaussian prior times a Gaussian likelihood.

    Parameters
    ----------
    x : Tensor or ndarray
        Observed values.
    loc, prior_var : Tensor or ndarray
        Prior.
    noise_var : Tensor or ndarray
        Likelihood variance (the noise variance at the prior location).

    Returns
    -------
    mean, var : Tensor or ndarray
    """
    w = prior_var / (prior_var + noise_var)
    return loc + w * (x - loc), w * noise_var


MIN_POSTERIOR_VAR = 1e-10
"""Smallest posterior variance of a component (photons^2; sd 1e-5 photons)."""

QUANTILE_RTOL = 1e-4
"""Error a quantile may keep in its tail probability, relative to it (at the 5 % end of a
90 % interval, 5e-6)."""

HALLEY_STEPS = 8
"""Halley steps at most, each on the quantiles still short of ``QUANTILE_RTOL`` (a step that
leaves the components' bracket bisects it instead)."""

BISECT_STEPS = 40
"""Bisection steps for what Halley's steps leave short (a far, narrow component)."""

TAIL_FLOOR = 1e-30
"""Tail probabilities below this (draws beyond ~11 sd) take the heavier component's value."""


@dataclass
class GuardedPosterior:
    """The clean value's distribution under the guarded prior: denoised value, intervals, samples.

    Each of the guard's two components (no surprise; surprise) times the pixel's likelihood
    gives a Gaussian, and the two are mixed with the guard's surprise probability; the
    denoised value is the mixture's mean (:attr:`mean`), so it is what the samples average
    to. Where that probability is small, the interval is the prior's own, not a Gaussian
    widened by the mixture's whole variance: a 5 % chance of a surprise whose mean is
    uncertain to 0.04 photons^2 added 0.002 to every such pixel's variance, ten times the
    prior's error in a sparse movie's background at 1 photon, and those pixels covered 0.98
    of their truth.

    The components are not reweighed by the pixel's own value: at a few photons its Gaussian
    likelihood reads a Poisson noise spike as a surprise (posterior means reweighed so lost
    0.6-2.1 dB on simulated movies at 1 photon).

    Attributes
    ----------
    weight : Tensor
        Probability of the surprise component.
    mean0, var0 : Tensor
        The no-surprise component (the prior in charge) given the pixel's value.
    mean1, var1 : Tensor
        The surprise component (moved by the local residual and widened by its slab).
    """

    weight: torch.Tensor
    mean0: torch.Tensor
    var0: torch.Tensor
    mean1: torch.Tensor
    var1: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """The posterior mean: the components' means mixed with the surprise probability.

        The denoised value. (Until session 48 it was the posterior mean of one Gaussian prior
        with the mixture's mean and variance, which gave a pixel whose surprise was uncertain
        the variance of both components and so pulled it toward its own noisy value: on the
        same network, dense 1-photon movie, 0.10 dB lower PSNR and 9 % more wobble, 0.002 more
        of clear events' amplitude kept; and it lay outside its own interval more often.)
        """
        return torch.lerp(self.mean0, self.mean1, self.weight)

    def at(self, pixels: torch.Tensor) -> GuardedPosterior:
        """Return the same distributions at some pixels: (T, P) from a (Y, X) boolean mask.

        The pixels keep the mask's row-major order; what :meth:`sample` then draws from them
        equals, pixel for pixel, what it draws from the whole frame.
        """
        return GuardedPosterior(
            *(t[:, pixels] for t in (self.weight, self.mean0, self.var0, self.mean1, self.var1))
        )

    def quantile(self, q: float) -> torch.Tensor:
        """Quantile at probability ``q`` of every pixel."""
        w, mh, sh, k, d = self._heavier
        z = torch.special.ndtri(torch.tensor(q, dtype=torch.float64)).to(mh.dtype)
        if not bool((w > 0).any()):
            return mh + sh * z
        # In units of the heavier component, y = (value - its mean) / its sd, the mixture's
        # CDF is (1 - w) Phi(y) + w Phi(k y + d), k and d placing the lighter component;
        # solved in the nearer tail (upper quantiles by symmetry), where the tail probability
        # keeps its relative precision in float32. A light component moves the quantile
        # little: its pixels are done after the first check.
        sign = -1.0 if bool(z > 0) else 1.0
        tail = _phi(-z.abs().double()).to(mh.dtype)
        n = w.numel()
        y = _mixture_tail_quantile(
            w.reshape(-1), k.reshape(-1), sign * d.reshape(-1), (sign * z).expand(n), tail.expand(n)
        )
        return mh + sh * (sign * y.view(mh.shape))

    @cached_property
    def _heavier(self) -> tuple[torch.Tensor, ...]:
        """The components in the heavier one's units, shared by every quantile asked for.

        The lighter component's weight, the heavier one's mean and sd, and the lighter one's
        place in the heavier one's units: sd ratio ``k`` and offset ``d``.
        """
        heavy1 = self.weight > 0.5
        w = torch.where(heavy1, 1 - self.weight, self.weight)
        mh = torch.where(heavy1, self.mean1, self.mean0)
        sh = torch.sqrt(torch.where(heavy1, self.var1, self.var0))
        mo = torch.where(heavy1, self.mean0, self.mean1)
        so = torch.sqrt(torch.where(heavy1, self.var0, self.var1))
        return w, mh, sh, sh / so, (mh - mo) / so

    def sample(self, u: torch.Tensor) -> torch.Tensor:
        """Draws of the clean values from standard normal draws ``u`` (any leading dims).

        A draw's rank decides its component: where the surprise lies above the prior
        (``mean1 >= mean0``) a draw in the top ``weight`` of its normal's probability is a
        surprise, else one in the bottom ``weight``; within its component the draw takes that
        component's quantile at its rank there. So each pixel's draws follow the mixture
        exactly, neighbours whose draws are correlated are surprised together, and where the
        surprise weighs nothing a draw is the no-surprise component's mean plus ``u`` of its
        standard deviations. (The mixture's own quantile at ``Phi(u)`` would take Halley's
        steps on every pixel of every draw.)
        """
        w = self.weight
        side = 1 - 2 * (self.mean1 < self.mean0).to(w.dtype)  # +1: the surprise lies above
        v = u * side  # positive towards the surprise
        up = v >= 0
        tiny = torch.finfo(w.dtype).tiny
        # Ranks within a component stop short of 1: a draw on the components' boundary has a
        # rank there that rounds to 1, whose quantile is infinite (~5.3 sd in float32).
        top = 1.0 - torch.finfo(w.dtype).eps / 2
        # The draw's tail probability on its own side, to full relative precision (kept above
        # the smallest normal number, that a draw beyond ~13 sd in float32 stays finite).
        # Computed in place (a draw array of each kind at most, where each step allocated
        # one): Phi(-|v|) = erfc(|v| / sqrt 2) / 2, the same values to the bit.
        tail = v.abs_().mul_(math.sqrt(0.5)).erfc_().mul_(0.5).clamp_(min=tiny)
        del v
        # No surprise: the rank among the no-surprise draws, as a tail probability on the
        # draw's own side (precise however far out it lies).
        tail0 = torch.where(up, tail - w, tail).div_(1 - w).clamp_(min=tiny, max=top)
        z0 = _tail_quantile(tail0)
        z0 = torch.where(up, z0.neg(), z0)  # away from the surprise if low
        out = z0.mul_(side * torch.sqrt(self.var0)).add_(self.mean0)
        # A surprise: in the top ``w`` of the ranks (below the middle only where w > 1/2).
        surprised = ((tail < w) & up | (tail > 1 - w) & ~up).nonzero(as_tuple=True)
        if surprised[0].numel():
            t, ws = tail[surprised], w.expand_as(tail)[surprised]
            above = torch.where(up[surprised], t, 1 - t)
            z1 = -_tail_quantile(torch.clamp(above / ws, max=top))
            m1, v1, s1 = (t.expand_as(tail)[surprised] for t in (self.mean1, self.var1, side))
            out[surprised] = m1 + s1 * torch.sqrt(v1) * z1
        return out


def _phi(x: torch.Tensor) -> torch.Tensor:
    """Return the standard normal CDF, to full relative precision in the lower tail.

    (``torch.special.ndtr`` is 0 below -8.4 in float64 and -5.4 in float32, and slower.)
    """
    return 0.5 * torch.erfc(x * -math.sqrt(0.5))


TAIL_ERFINV = 1e-3
"""Tail probabilities above this are inverted through ``erfinv`` (vectorised), those below
through ``ndtri`` (exact in the far tail, slow): in float32 either way the quantile's tail
probability is within 2e-5 of the one asked for (measured from 1e-37 to 0.5)."""


def _tail_quantile(p: torch.Tensor) -> torch.Tensor:
    """Return the standard normal quantile at the lower-tail probabilities ``p <= 1``.

    Written into ``p``'s own memory (its far tail read first): pass a temporary.
    """
    far = (p < TAIL_ERFINV).nonzero(as_tuple=True)
    p_far = p[far]
    z = p.mul_(2).sub_(1).erfinv_().mul_(math.sqrt(2))
    if far[0].numel():
        z[far] = torch.special.ndtri(p_far)
    return z


def _mixture_tail_quantile(
    w: torch.Tensor, k: torch.Tensor, d: torch.Tensor, z: torch.Tensor, tail: torch.Tensor
) -> torch.Tensor:
    """Solve ``(1 - w) Phi(y) + w Phi(k y + d) = tail`` for y (1-D tensors, ``tail <= 0.5``).

    ``z = Phi^-1(tail)`` is the heavier component's quantile, and the solution lies between
    it and the lighter one's, ``(z - d) / k``. Halley's method from ``z`` (the CDF's first two
    derivatives come with its densities), each step on the quantiles still short of
    ``QUANTILE_RTOL``: a lighter component that weighs little moves the quantile little, and
    most pixels are done after one step. A step that leaves the bracket bisects it instead;
    what ``HALLEY_STEPS`` leave short is bisected.
    """
    other = (z - d) / k
    lo, hi = torch.minimum(z, other), torch.maximum(z, other)
    y = z
    at: torch.Tensor | None = None  # where the values still being solved lie (None: all)
    yt, wt, kt, dt, qt = y, w, k, d, tail
    scale = 1 / math.sqrt(2 * math.pi)
    for step in range(HALLEY_STEPS + 1):
        rt = kt * yt + dt
        if step == 0:  # at y = z, Phi(y) is the tail itself; every pixel takes a step
            err = torch.where(qt > TAIL_FLOOR, wt * (_phi(rt) - qt), 0.0)
        else:
            err = (1 - wt) * _phi(yt) + wt * _phi(rt) - qt
            # (Integer indices: gathering with a boolean mask costs several times more.)
            short = ((err.abs() > QUANTILE_RTOL * qt) & (qt > TAIL_FLOOR)).nonzero().squeeze(1)
            if short.numel() == 0:
                return y
            if step == HALLEY_STEPS:
                break
            yt, wt, kt, dt, qt, rt, err, lo, hi = (
                t.index_select(0, short) for t in (yt, wt, kt, dt, qt, rt, err, lo, hi)
            )
            at = short if at is None else at.index_select(0, short)
        g0 = (1 - wt) * torch.exp(-0.5 * yt * yt) * scale
        g1 = wt * kt * torch.exp(-0.5 * rt * rt) * scale
        pdf = torch.clamp(g0 + g1, min=1e-30)
        slope = -(yt * g0 + kt * rt * g1)  # the density's derivative
        below = err < 0
        lo, hi = torch.where(below, yt, lo), torch.where(below, hi, yt)
        new = yt - 2 * err * pdf / (2 * pdf * pdf - err * slope)
        yt = torch.where((new > lo) & (new < hi), new, 0.5 * (lo + hi))
        if at is None:
            y = yt
        else:
            y.index_copy_(0, at, yt)
    # Bisection of what Halley's steps left short.
    at = short if at is None else at.index_select(0, short)
    lo, hi, wt, kt, dt, qt = (t.index_select(0, short) for t in (lo, hi, wt, kt, dt, qt))
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        below = (1 - wt) * _phi(mid) + wt * _phi(kt * mid + dt) < qt
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    y.index_copy_(0, at, 0.5 * (lo + hi))
    return y


def guarded_posterior(
    x: torch.Tensor, guard: GuardOutput, noise_var: Callable[[torch.Tensor], torch.Tensor]
) -> GuardedPosterior:
    """Combine each of the guarded prior's components with the pixel's likelihood.

    Parameters
    ----------
    x : Tensor
        Observed values (photon units).
    guard : GuardOutput
        The guarded prior of the same pixels (its ``var`` with the final calibration).
    noise_var : callable
        Detector noise variance at a clean value.

    Returns
    -------
    GuardedPosterior
    """
    p = guard.p_surprise
    loc0, var0, loc1, var1 = guard.components()
    mean0, post0 = gaussian_posterior(x, loc0, var0, noise_var(loc0))
    # A component of no spread (a prior variance that underflowed to 0) has no quantiles in
    # units of itself: the mixture's read NaN (a collapsed calibration gave 202 NaN interval
    # ends in a 300 x 64 x 64 movie). A floor far below any noise keeps them finite.
    post0 = post0.clamp(min=MIN_POSTERIOR_VAR)
    if not bool((p > 0).any()):
        return GuardedPosterior(p, mean0, post0, mean0, post0)
    mean1, post1 = gaussian_posterior(x, loc1, var1, noise_var(loc1))
    return GuardedPosterior(p, mean0, post0, mean1, post1.clamp(min=MIN_POSTERIOR_VAR))


def predictive_pit(
    x: torch.Tensor, guard: GuardOutput, noise_var: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Probability integral transform of raw values under the guarded prior plus noise.

    Each component's predictive is Gaussian (its variance plus the noise's at its location);
    the two are mixed with the surprise probability. Uniform on [0, 1] if the model is right.

    Parameters
    ----------
    x : Tensor
        Raw values (photon units), held out from what the prior saw.
    guard : GuardOutput
        The guarded prior of the same pixels.
    noise_var : callable
        Detector noise variance at a clean value.

    Returns
    -------
    Tensor
        The predictive CDF at each raw value.
    """
    p = guard.p_surprise
    loc0, var0, loc1, var1 = guard.components()
    pit0 = _phi((x - loc0) / torch.sqrt(var0 + noise_var(loc0)))
    pit1 = _phi((x - loc1) / torch.sqrt(var1 + noise_var(loc1)))
    return (1 - p) * pit0 + p * pit1
