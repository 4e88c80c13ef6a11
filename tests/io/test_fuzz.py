"""Fuzzing the readers: any small file either reads back exactly or raises InputError.

Files of random shapes and data types are written with each format's own library; some are
then damaged (truncated, or bytes overwritten). :func:`calmdown.io.open_movie` and reading
every frame must either give back exactly what was written or raise :class:`InputError`,
never another exception. Damaged files may still read (nothing checksums raw pixels): then
only the shape and type are checked. Examples are drawn deterministically (``derandomize``).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from calmdown.errors import InputError
from calmdown.io import open_movie

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis (test extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

FORMATS = [".tif", ".h5", ".npy", ".zarr"]
DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64"]
FUZZ = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def movies(draw: st.DrawFn) -> np.ndarray:
    ndim = draw(st.sampled_from([2, 3, 3, 3, 4]))
    shape = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if dtype.kind == "f":
        elements = st.floats(width=8 * dtype.itemsize) | st.floats(-1e6, 1e6)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    return draw(hnp.arrays(dtype, shape, elements=elements))


def write(path: Path, data: np.ndarray) -> None:
    if path.suffix == ".tif":
        tifffile.imwrite(path, data, photometric="minisblack")
    elif path.suffix == ".h5":
        with h5py.File(path, "w") as f:
            f["data"] = data
    elif path.suffix == ".npy":
        np.save(path, data)
    else:
        z = zarr.open_array(store=str(path), mode="w", shape=data.shape, dtype=data.dtype)
        z[...] = data


def read_all(path: Path) -> np.ndarray:
    with open_movie(path) as reader:
        out = reader.read(0, len(reader))
        assert out.dtype == np.float32
        assert out.shape == reader.shape
        return out


def expected(data: np.ndarray) -> np.ndarray | None:
    """Return what a reader gives for `data`, or None where it must refuse it."""
    squeezed = data
    while squeezed.ndim > 3 and 1 in squeezed.shape:
        squeezed = np.squeeze(squeezed, axis=squeezed.shape.index(1))
    if squeezed.ndim != 3:
        return None
    with np.errstate(over="ignore"):  # beyond float32's range: infinite, to be refused
        as_float = squeezed.astype(np.float32)
    if not np.all(np.isfinite(as_float)):
        return None
    return as_float


@FUZZ
@given(data=movies(), suffix=st.sampled_from(FORMATS))
def test_round_trip_or_input_error(data: np.ndarray, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"movie{suffix}"
        write(path, data)
        want = expected(data)
        try:
            got = read_all(path)
        except InputError:
            assert want is None or suffix == ".tif", f"refused a good movie {data.shape}"
            return
        assert want is not None, f"read {data.shape} {data.dtype}, which should be refused"
        if suffix == ".tif" and got.shape != want.shape:
            # tifffile may label a small first axis as samples or planes; still exact values
            np.testing.assert_array_equal(np.sort(got, axis=None), np.sort(want, axis=None))
            return
        np.testing.assert_array_equal(got, want)


def damage(path: Path, how: str, where: float, payload: bytes) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    target = files[int(where * len(files)) % len(files)]
    size = target.stat().st_size
    if how == "truncate":
        with open(target, "r+b") as f:
            f.truncate(int(where * size))
    else:
        with open(target, "r+b") as f:
            f.seek(int(where * max(size - 1, 0)))
            f.write(payload)


@FUZZ
@given(
    data=movies(),
    suffix=st.sampled_from(FORMATS),
    how=st.sampled_from(["truncate", "overwrite"]),
    where=st.floats(0.0, 0.999),
    payload=st.binary(min_size=1, max_size=16),
)
def test_damaged_files_raise_only_input_error(
    data: np.ndarray, suffix: str, how: str, where: float, payload: bytes
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"movie{suffix}"
        write(path, data)
        damage(path, how, where, payload)
        with contextlib.suppress(InputError):
            read_all(path)
