"""The side-by-side review movie: raw | moving average | denoised | uncertainty, as animated WebP.

Frames are collected while the movie streams past (a window of consecutive frames, the full
field reduced to at most ``max_side`` pixels and a zoom at full resolution), then composed into
RGB frames and encoded with Pillow. Animated WebP plays in every current browser and compresses
noisy frames far better than GIF.
"""

from __future__ import annotations

import io
import math

import numpy as np
from scipy import ndimage

__all__ = ["MovieCollector", "choose_zoom", "encode_webp"]

PANELS = ("raw", "moving average (5 frames)", "denoised", "90 % interval width")


def choose_zoom(mean_image: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """Square box ``(y0, y1, x0, x1)`` of side ``size`` with the most fine structure.

    Fine structure is the energy of the mean image's spatial high-pass (cell edges, processes),
    where wobble and invented detail show first.
    """
    h, w = mean_image.shape
    size = max(1, min(size, h, w))
    m = np.asarray(mean_image, np.float64)
    hp = m - ndimage.gaussian_filter(m, 2.0)
    energy = ndimage.uniform_filter(hp * hp, size, mode="constant")
    half = size // 2
    valid = energy[half : h - size + half + 1, half : w - size + half + 1]
    iy, ix = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(iy), int(iy) + size, int(ix), int(ix) + size


def _downsample(frames: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return frames
    n, h, w = frames.shape
    h2, w2 = h // factor, w // factor
    cut = frames[:, : h2 * factor, : w2 * factor]
    return cut.reshape(n, h2, factor, w2, factor).mean(axis=(2, 4))


class MovieCollector:
    """Keep a window of consecutive frames of each panel, reduced in size.

    Parameters
    ----------
    shape : tuple of int
        ``(T, Y, X)`` of the movie.
    zoom : tuple of int
        Box ``(y0, y1, x0, x1)`` shown at full resolution.
    max_frames : int
        Frames in the window (taken from the middle of the movie).
    max_side : int
        Longest side of the full-field panels, pixels.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        zoom: tuple[int, int, int, int],
        *,
        max_frames: int = 200,
        max_side: int = 256,
    ) -> None:
        n_frames, h, w = shape
        self.factor = max(1, math.ceil(max(h, w) / max_side))
        n = min(max_frames, n_frames)
        self.w0 = (n_frames - n) // 2
        self.w1 = self.w0 + n
        self.r0 = max(0, self.w0 - 2)  # the moving average needs two frames either side
        self.r1 = min(n_frames, self.w1 + 2)
        self.zoom = zoom
        h2, w2 = h // self.factor, w // self.factor
        zy, zx = zoom[1] - zoom[0], zoom[3] - zoom[2]
        self.full = {
            "raw": np.zeros((self.r1 - self.r0, h2, w2), np.float32),
            "denoised": np.zeros((n, h2, w2), np.float32),
            "width": np.zeros((n, h2, w2), np.float32),
        }
        self.crop = {
            "raw": np.zeros((self.r1 - self.r0, zy, zx), np.float32),
            "denoised": np.zeros((n, zy, zx), np.float32),
            "width": np.zeros((n, zy, zx), np.float32),
        }

    @property
    def frames(self) -> range:
        """Frame indices of the movie window."""
        return range(self.w0, self.w1)

    def add(
        self, start: int, raw: np.ndarray, denoised: np.ndarray, width: np.ndarray | None
    ) -> None:
        """Take what falls into the window from frames ``start..start + len(raw)`` (ADU)."""
        stop = start + raw.shape[0]
        y0, y1, x0, x1 = self.zoom
        for name, arr, a, b in (
            ("raw", raw, self.r0, self.r1),
            ("denoised", denoised, self.w0, self.w1),
            ("width", width, self.w0, self.w1),
        ):
            lo, hi = max(start, a), min(stop, b)
            if arr is None or hi <= lo:
                continue
            part = arr[lo - start : hi - start]
            self.full[name][lo - a : hi - a] = _downsample(part, self.factor)
            self.crop[name][lo - a : hi - a] = part[:, y0:y1, x0:x1]

    def panels(self) -> dict[str, dict[str, np.ndarray]]:
        """Return the four panels over the window: ``{"full": {...}, "zoom": {...}}``."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for scale, store in (("full", self.full), ("zoom", self.crop)):
            raw = store["raw"]
            ma = ndimage.uniform_filter1d(raw, 5, axis=0, mode="nearest")
            sel = slice(self.w0 - self.r0, self.w1 - self.r0)
            out[scale] = {
                "raw": raw[sel],
                "average": ma[sel],
                "denoised": store["denoised"],
                "width": store["width"],
            }
        return out


def _gray(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    v = np.clip((img - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    g = (v * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _lut(img: np.ndarray, lut: np.ndarray, lo: float, hi: float) -> np.ndarray:
    v = np.clip((img - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return lut[(v * 255.0 + 0.5).astype(np.intp)]


def compose_frames(
    collector: MovieCollector, *, gap: int = 2
) -> tuple[list[np.ndarray], dict[str, float]]:
    """RGB frames: the four full-field panels above the four zoom panels.

    The raw, averaged and denoised panels share one grey scale (from the denoised window's
    0.5th to 99.8th percentile); the interval width uses ``magma`` from 0 to its 99th
    percentile. The zoom box is outlined in yellow on the full-field panels.

    Returns
    -------
    frames : list of ndarray
        ``(H, W, 3)`` uint8 images.
    scale : dict
        ``lo``, ``hi`` (grey scale, ADU) and ``width_hi`` (ADU).
    """
    from matplotlib import colormaps

    lut = (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    panels = collector.panels()
    den = panels["full"]["denoised"]
    lo, hi = (float(v) for v in np.percentile(den, [0.5, 99.8]))
    if hi <= lo:
        hi = lo + 1.0
    wid = panels["full"]["width"]
    whi = float(np.percentile(wid, 99)) if np.any(wid > 0) else 1.0
    whi = whi if whi > 0 else 1.0
    full_h, full_w = den.shape[1:]
    zh, zw = panels["zoom"]["denoised"].shape[1:]
    up = max(1, round(full_w / max(zw, 1)))
    zoom_h, zoom_w = zh * up, zw * up
    pw = max(full_w, zoom_w)
    height = full_h + gap + zoom_h
    width = 4 * pw + 3 * gap
    y0, y1, x0, x1 = (v // collector.factor for v in collector.zoom)
    frames = []
    keys = ("raw", "average", "denoised", "width")
    n = den.shape[0]
    for t in range(n):
        canvas = np.full((height, width, 3), 255, np.uint8)
        for j, key in enumerate(keys):
            left = j * (pw + gap)
            for scale, top in (("full", 0), ("zoom", full_h + gap)):
                img = panels[scale][key][t]
                if scale == "zoom":
                    img = np.repeat(np.repeat(img, up, axis=0), up, axis=1)
                rgb = _lut(img, lut, 0.0, whi) if key == "width" else _gray(img, lo, hi)
                if scale == "full":
                    _outline(rgb, y0, min(y1, rgb.shape[0]) - 1, x0, min(x1, rgb.shape[1]) - 1)
                canvas[top : top + rgb.shape[0], left : left + rgb.shape[1]] = rgb
        frames.append(canvas)
    return frames, {"lo": lo, "hi": hi, "width_hi": whi}


def _outline(rgb: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> None:
    color = np.array([255, 220, 0], np.uint8)
    rgb[y0, x0 : x1 + 1] = color
    rgb[y1, x0 : x1 + 1] = color
    rgb[y0 : y1 + 1, x0] = color
    rgb[y0 : y1 + 1, x1] = color


def encode_webp(
    frames: list[np.ndarray], *, fps: float = 15.0, quality: int = 70, max_bytes: int = 12_000_000
) -> tuple[bytes, int]:
    """Encode RGB frames as a looping animated WebP of at most ``max_bytes``.

    Lowers the quality, then drops every other frame, until the file fits.

    Returns
    -------
    data : bytes
        The WebP file.
    step : int
        Every ``step``-th frame was kept.
    """
    from PIL import Image

    step = 1
    while True:
        images = [Image.fromarray(f) for f in frames[::step]]
        buf = io.BytesIO()
        images[0].save(
            buf,
            format="WEBP",
            save_all=True,
            append_images=images[1:],
            duration=round(1000.0 * step / fps),
            loop=0,
            quality=quality,
            method=2,
        )
        data = buf.getvalue()
        if len(data) <= max_bytes or len(images) <= 2:
            return data, step
        if quality > 40:
            quality -= 20
        else:
            step *= 2
