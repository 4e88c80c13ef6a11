"""Read regions of interest (cells) as weighted pixel masks, for ``calmdown traces``.

Sources, chosen by the path:

label image (``.npy``, ``.tif``/``.tiff``)
    A 2-D integer image, 0 for background; each other value is one ROI, its id. A 3-D stack
    of N masks (N, Y, X) is read as N ROIs with ids 1..N, weighted by the mask values.
suite2p (``stat.npy``, or the plane folder holding it)
    ``ypix``, ``xpix`` and ``lam`` (weights) of every ROI; when ``iscell.npy`` lies beside it,
    only ROIs classified as cells are kept. Ids are the indices into ``stat.npy``, as suite2p
    numbers them (from 0).
ImageJ (``.zip`` ROI set from the ROI Manager, or one ``.roi``)
    Rectangles, ovals, polygons, freehand and traced ROIs, and composite (shape) ROIs with
    holes, rasterised to pixel masks: a pixel belongs to a ROI when its centre lies inside.
    Ids are 1..n in file order; lines and points (which have no area) are refused. Reading
    them needs the ``roifile`` package.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calmdown.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Rois", "read_rois"]

Mask = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Rois:
    """ROIs as weighted pixel lists on frames of a known shape.

    Attributes
    ----------
    ids : numpy.ndarray
        One integer id per ROI (``int64``).
    masks : list of (ys, xs, weights)
        Row and column indices (``intp``) of each ROI's pixels, and their weights
        (``float32``; 1 for label images and ImageJ ROIs, ``lam`` for suite2p).
    shape : tuple of int
        ``(Y, X)`` of the frames the ROIs lie on.
    names : tuple of str
        Names (ImageJ ROIs), else empty.
    source : Path or None
        The file read.

    Examples
    --------
    >>> import numpy as np
    >>> rois = Rois(np.array([7]), [(np.array([0, 1]), np.array([2, 2]), np.ones(2, "f4"))], (3, 4))
    >>> rois.label_image()
    array([[0, 0, 7, 0],
           [0, 0, 7, 0],
           [0, 0, 0, 0]], dtype=int32)
    """

    ids: np.ndarray
    masks: list[Mask]
    shape: tuple[int, int]
    names: tuple[str, ...] = ()
    source: Path | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.masks)

    def label_image(self) -> np.ndarray:
        """Draw the ROIs as one ``int32`` image of their ids, 0 for background.

        Where ROIs overlap, a pixel shows the ROI that weighs it most (the first on ties).

        Returns
        -------
        numpy.ndarray
            Shape ``(Y, X)``.
        """
        labels = np.zeros(self.shape, dtype=np.int32)
        best = np.full(self.shape, -np.inf, dtype=np.float32)
        for roi_id, (ys, xs, weights) in zip(self.ids, self.masks, strict=True):
            better = weights > best[ys, xs]
            labels[ys[better], xs[better]] = int(roi_id)
            best[ys[better], xs[better]] = weights[better]
        return labels

    def cropped(self, crop: tuple[tuple[int, int], tuple[int, int]]) -> Rois:
        """Return the ROIs on the rows ``y0:y1`` and columns ``x0:x1`` of their frames.

        Pixels outside are dropped; an ROI left with none is dropped with a warning.

        Raises
        ------
        InputError
            When no ROI has a pixel inside the crop.
        """
        (y0, y1), (x0, x1) = crop
        ids, masks, names, lost = [], [], [], []
        for k, (roi_id, (ys, xs, weights)) in enumerate(zip(self.ids, self.masks, strict=True)):
            inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
            if not inside.any():
                lost.append(int(roi_id))
                continue
            ids.append(roi_id)
            masks.append((ys[inside] - y0, xs[inside] - x0, weights[inside]))
            if self.names:
                names.append(self.names[k])
        if not ids:
            raise InputError(
                f"no ROI has a pixel in the rows {y0}:{y1} and columns {x0}:{x1} read; draw the "
                "ROIs on the measured part of the frame, or widen the crop",
                path=self.source,
            )
        if lost:
            logger.warning(
                "%d ROI(s) lie wholly outside the rows %d:%d and columns %d:%d read and are "
                "left out: ids %s",
                len(lost),
                y0,
                y1,
                x0,
                x1,
                ", ".join(map(str, lost[:10])),
            )
        return Rois(
            np.asarray(ids, dtype=np.int64), masks, (y1 - y0, x1 - x0), tuple(names), self.source
        )


def read_rois(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    crop: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> Rois:
    """Read ROIs from a label image, suite2p ``stat.npy`` or an ImageJ ROI set.

    Parameters
    ----------
    path : str or os.PathLike
        The ROI file (see the module notes for the formats), or a suite2p plane folder.
    shape : tuple of int
        ``(Y, X)`` of the movie's frames; the ROIs must fit them.
    crop : ((int, int), (int, int)), optional
        The rows and columns of those frames that the movie is read in (see
        :func:`calmdown.io.open_movie`): the ROIs are returned on them (:meth:`Rois.cropped`).

    Returns
    -------
    Rois
        At least one ROI, every pixel inside the frame.

    Raises
    ------
    InputError
        When the file is missing, empty, unreadable or of an unknown kind, holds no ROIs, or
        its ROIs do not fit frames of `shape`; the message names the file and the fix.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.npy")
    >>> np.save(path, np.array([[0, 3], [3, 5]]))
    >>> rois = read_rois(path, (2, 2))
    >>> rois.ids.tolist(), [len(ys) for ys, _, _ in rois.masks]
    ([3, 5], [2, 1])
    """
    rois = _read_rois(Path(path).expanduser(), (int(shape[0]), int(shape[1])))
    return rois if crop is None else rois.cropped(crop)


def _read_rois(path: Path, shape: tuple[int, int]) -> Rois:
    if not path.exists():
        raise InputError("no such ROI file; check the path", path=path)
    if path.is_dir():
        if (path / "stat.npy").is_file():
            return _read_suite2p(path / "stat.npy", shape)
        raise InputError(
            "is a folder without suite2p's stat.npy; pass a label image (.tif, .npy), "
            "stat.npy or an ImageJ ROI set (.zip)",
            path=path,
        )
    if path.stat().st_size == 0:
        raise InputError("is empty (0 bytes); export the ROIs again", path=path)
    suffix = path.suffix.lower()
    if suffix in (".zip", ".roi"):
        return _read_imagej(path, shape)
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as err:
            if "pickle" in str(err).lower() or "object" in str(err).lower():
                return _read_suite2p(path, shape)
            raise InputError(
                f"cannot read as a .npy file ({err}); save the ROIs again with numpy.save",
                path=path,
            ) from err
        except (OSError, EOFError) as err:
            raise InputError(
                f"cannot read as a .npy file ({err}); it may be truncated; save it again",
                path=path,
            ) from err
        return _from_labels(np.asarray(array), shape, path)
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            array = tifffile.imread(path)
        except Exception as err:  # tifffile raises many types for a damaged file
            raise InputError(
                f"cannot read as a TIFF label image ({type(err).__name__}: {err}); the file may "
                "be truncated or corrupt; export it again",
                path=path,
            ) from err
        return _from_labels(np.asarray(array), shape, path)
    raise InputError(
        f"has an unknown extension '{path.suffix}' for ROIs; pass a label image (.tif, .npy), "
        "suite2p's stat.npy or an ImageJ ROI set (.zip, .roi)",
        path=path,
    )


# -- label images -----------------------------------------------------------------------------


def _check_frame(found: tuple[int, ...], shape: tuple[int, int], path: Path, what: str) -> None:
    if tuple(found) != shape:
        raise InputError(
            f"{what} is {found[0]} x {found[1]} pixels but the movie's frames are "
            f"{shape[0]} x {shape[1]}; use ROIs drawn on this movie (same crop and binning)",
            path=path,
        )


def _from_labels(array: np.ndarray, shape: tuple[int, int], path: Path) -> Rois:
    if array.dtype.kind not in "biuf":
        raise InputError(
            f"holds data of type {array.dtype}, not a label image; save integer labels "
            "(0 = background)",
            path=path,
        )
    squeezed = array.squeeze() if array.ndim > 2 else array
    if squeezed.ndim == 3:
        return _from_mask_stack(squeezed, shape, path)
    if squeezed.ndim != 2:
        raise InputError(
            f"holds an array of shape {array.shape}; a label image is 2-D (Y, X) with 0 for "
            "background and one integer per ROI",
            path=path,
        )
    _check_frame(squeezed.shape, shape, path, "the label image")
    if squeezed.dtype.kind == "f" and (
        not np.all(np.isfinite(squeezed)) or np.any(squeezed != np.round(squeezed))
    ):
        raise InputError(
            "holds fractional or NaN values, so it is not a label image; save integer "
            "labels (0 = background)",
            path=path,
        )
    labels = squeezed.astype(np.int64)
    if labels.min(initial=0) < 0:
        raise InputError(
            f"holds negative labels (down to {labels.min()}); labels are 0 for background and "
            "positive integers for ROIs",
            path=path,
        )
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_labels = flat[order]
    ids, starts = np.unique(sorted_labels, return_index=True)
    bounds = [*starts[1:], len(flat)]
    masks: list[Mask] = []
    kept = []
    for roi_id, start, stop in zip(ids, starts, bounds, strict=True):
        if roi_id == 0:
            continue
        ys, xs = np.unravel_index(order[start:stop], labels.shape)
        masks.append((ys.astype(np.intp), xs.astype(np.intp), np.ones(len(ys), np.float32)))
        kept.append(int(roi_id))
    if not masks:
        raise InputError(
            "holds no ROIs (every pixel is 0, background); check that it is the right label image",
            path=path,
        )
    return Rois(np.asarray(kept, dtype=np.int64), masks, shape, source=path)


def _from_mask_stack(stack: np.ndarray, shape: tuple[int, int], path: Path) -> Rois:
    _check_frame(stack.shape[1:], shape, path, "each mask of the stack")
    masks: list[Mask] = []
    for i, mask in enumerate(stack):
        weights = np.asarray(mask, dtype=np.float32)
        ys, xs = np.nonzero(weights)
        if len(ys) == 0:
            raise InputError(
                f"mask {i + 1} of {len(stack)} is empty; remove it or draw the ROI again",
                path=path,
            )
        masks.append((ys.astype(np.intp), xs.astype(np.intp), weights[ys, xs]))
    return Rois(np.arange(1, len(masks) + 1, dtype=np.int64), masks, shape, source=path)


# -- suite2p ----------------------------------------------------------------------------------


def _read_suite2p(path: Path, shape: tuple[int, int]) -> Rois:
    try:
        stat = np.load(path, allow_pickle=True)
    except Exception as err:  # pickle raises many types for a damaged file
        raise InputError(
            f"cannot read suite2p ROIs ({type(err).__name__}: {err}); the file may be "
            "truncated; run suite2p's detection again",
            path=path,
        ) from err
    if stat.dtype != object or stat.ndim != 1:
        raise InputError(
            f"holds an array of {stat.dtype} {stat.shape}, not suite2p's stat.npy (a list of "
            "ROI records with ypix, xpix, lam)",
            path=path,
        )
    if len(stat) == 0:
        raise InputError("holds no ROIs; run suite2p's detection again", path=path)
    keep = np.ones(len(stat), dtype=bool)
    iscell_path = path.with_name("iscell.npy")
    if iscell_path.is_file():
        try:
            iscell = np.asarray(np.load(iscell_path, allow_pickle=False))
        except (ValueError, OSError, EOFError) as err:
            raise InputError(
                f"cannot read suite2p's cell classification ({err}); remove or replace it",
                path=iscell_path,
            ) from err
        flags = iscell[:, 0] if iscell.ndim == 2 else iscell
        if len(flags) != len(stat):
            raise InputError(
                f"classifies {len(flags)} ROIs but stat.npy beside it holds {len(stat)}; they "
                "come from different suite2p runs: copy the matching pair",
                path=iscell_path,
            )
        keep = np.asarray(flags, dtype=float) > 0.5
        if not keep.any():
            raise InputError(
                f"classifies none of the {len(stat)} ROIs as a cell, so there is nothing to "
                "read; relabel cells in the suite2p GUI, or move iscell.npy away to use every "
                "ROI",
                path=iscell_path,
            )
    masks: list[Mask] = []
    ids = np.flatnonzero(keep)
    ly, lx = shape
    for index in ids:
        roi = stat[index]
        try:
            ys = np.asarray(roi["ypix"], dtype=np.intp).ravel()
            xs = np.asarray(roi["xpix"], dtype=np.intp).ravel()
            lam = roi.get("lam") if hasattr(roi, "get") else None
            weights = (
                np.ones(len(ys), np.float32)
                if lam is None
                else np.asarray(lam, dtype=np.float32).ravel()
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise InputError(
                f"ROI {index} has no usable ypix/xpix/lam ({type(err).__name__}: {err}); it is "
                "not suite2p's stat.npy",
                path=path,
            ) from err
        if not len(ys) == len(xs) == len(weights) or len(ys) == 0:
            raise InputError(
                f"ROI {index} has {len(ys)} ypix, {len(xs)} xpix and {len(weights)} lam values; "
                "they must be equal and non-zero; run suite2p's detection again",
                path=path,
            )
        if ys.min() < 0 or xs.min() < 0 or ys.max() >= ly or xs.max() >= lx:
            raise InputError(
                f"ROI {index} reaches pixel (row {ys.max()}, column {xs.max()}) but the movie's "
                f"frames are {ly} x {lx}; these ROIs belong to another recording or crop: use "
                "the stat.npy of this movie",
                path=path,
            )
        masks.append((ys, xs, weights))
    logger.debug("%s: %d of %d suite2p ROIs kept", path, len(ids), len(stat))
    return Rois(ids.astype(np.int64), masks, shape, source=path)


# -- ImageJ -----------------------------------------------------------------------------------


def _inside_polygons(polygons: list[np.ndarray], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Whether pixel centres ``(ys + .5, xs + .5)`` lie inside (even-odd over all polygons)."""
    from matplotlib.path import Path as PolyPath

    points = np.column_stack([xs + 0.5, ys + 0.5])
    inside = np.zeros(len(points), dtype=bool)
    for polygon in polygons:
        if len(polygon) >= 3:
            inside ^= PolyPath(polygon).contains_points(points)
    return inside


def _rasterise(roi: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixels of one ImageJ ROI inside the frame, or None for ROIs without area."""
    import roifile

    kind = roifile.ROI_TYPE
    ly, lx = shape
    roitype = roi.roitype
    if roitype == kind.RECT and not roi.composite:
        top, left = max(0, int(roi.top)), max(0, int(roi.left))
        bottom, right = min(ly, int(roi.bottom)), min(lx, int(roi.right))
        if bottom <= top or right <= left:
            return np.empty(0, np.intp), np.empty(0, np.intp)
        ys, xs = np.mgrid[top:bottom, left:right]
        return ys.ravel(), xs.ravel()
    if roitype == kind.OVAL and not roi.composite:
        top, left, bottom, right = (float(v) for v in (roi.top, roi.left, roi.bottom, roi.right))
        cy, cx = (top + bottom) / 2, (left + right) / 2
        ry, rx = max((bottom - top) / 2, 1e-9), max((right - left) / 2, 1e-9)
        y0, y1 = max(0, int(np.floor(top))), min(ly, int(np.ceil(bottom)))
        x0, x1 = max(0, int(np.floor(left))), min(lx, int(np.ceil(right)))
        ys, xs = np.mgrid[y0:y1, x0:x1]
        ys, xs = ys.ravel(), xs.ravel()
        inside = ((ys + 0.5 - cy) / ry) ** 2 + ((xs + 0.5 - cx) / rx) ** 2 <= 1.0
        return ys[inside], xs[inside]
    area_types = (kind.POLYGON, kind.FREEHAND, kind.TRACED, kind.RECT, kind.OVAL)
    if roitype not in area_types:
        return None
    polygons = roi.coordinates(multi=True) if roi.composite else [roi.coordinates()]
    polygons = [np.asarray(p, dtype=np.float64) for p in polygons if p is not None and len(p)]
    if not polygons:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    allpoints = np.concatenate(polygons)
    x0, y0 = np.floor(allpoints.min(axis=0)).astype(int)
    x1, y1 = np.ceil(allpoints.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(lx, x1 + 1), min(ly, y1 + 1)
    if x1 <= x0 or y1 <= y0:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    ys, xs = ys.ravel(), xs.ravel()
    inside = _inside_polygons(polygons, ys, xs)
    if not inside.any():  # thinner than a pixel: take the pixels its vertices fall in
        vy = np.floor(allpoints[:, 1]).astype(int)
        vx = np.floor(allpoints[:, 0]).astype(int)
        ok = (vy >= 0) & (vy < ly) & (vx >= 0) & (vx < lx)
        pixels = np.unique(np.column_stack([vy[ok], vx[ok]]), axis=0)
        return pixels[:, 0].astype(np.intp), pixels[:, 1].astype(np.intp)
    return ys[inside], xs[inside]


def _read_imagej(path: Path, shape: tuple[int, int]) -> Rois:
    try:
        import roifile
    except ImportError as err:
        raise InputError(
            f"reading ImageJ ROIs needs the roifile package ({err}); pip install roifile, or "
            "export the ROIs as a label image",
            path=path,
        ) from err
    try:
        found = roifile.ImagejRoi.fromfile(path)
    except Exception as err:  # zipfile, struct and roifile errors for damaged files
        raise InputError(
            f"cannot read as ImageJ ROIs ({type(err).__name__}: {err}); the file may be "
            "truncated or not an ImageJ ROI set; export it again from the ROI Manager",
            path=path,
        ) from err
    rois = found if isinstance(found, list) else [found]
    if not rois:
        raise InputError(
            "holds no ROIs; add them in ImageJ's ROI Manager and save the set again",
            path=path,
        )
    masks: list[Mask] = []
    names: list[str] = []
    for number, roi in enumerate(rois, start=1):
        name = roi.name or f"#{number}"
        pixels = _rasterise(roi, shape)
        if pixels is None:
            raise InputError(
                f"ROI {number} ('{name}') is a {roifile.ROI_TYPE(roi.roitype).name.lower()}, "
                "which has no area; delete it from the set or draw an area (polygon, oval, "
                "rectangle, freehand)",
                path=path,
            )
        ys, xs = pixels
        if len(ys) == 0:
            raise InputError(
                f"ROI {number} ('{name}') lies outside the movie's frames of {shape[0]} x "
                f"{shape[1]} pixels (its box: rows {roi.top}-{roi.bottom}, columns "
                f"{roi.left}-{roi.right}); use ROIs drawn on this movie",
                path=path,
            )
        masks.append((ys.astype(np.intp), xs.astype(np.intp), np.ones(len(ys), np.float32)))
        names.append(name)
    return Rois(
        np.arange(1, len(masks) + 1, dtype=np.int64), masks, shape, tuple(names), source=path
    )
