"""Read ``.npy`` movies through a read-only memory map."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import SlicedReader

logger = logging.getLogger(__name__)

__all__ = ["NpyReader"]


class NpyReader(SlicedReader):
    """A ``.npy`` movie, memory-mapped (``np.load(mmap_mode="r")``).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npy`` file, holding an array of shape ``(T, Y, X)``.

    Raises
    ------
    InputError
        When the file is not a valid ``.npy`` file, is truncated, or holds no numeric movie.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            text = str(err)
            if "allow_pickle" in text or "Object arrays" in text:
                raise InputError(
                    "holds Python objects (a pickled array), not numeric intensities; save the "
                    "movie as a numeric array with numpy.save",
                    path=path,
                ) from err
            raise InputError(
                f"cannot read as a .npy file ({text}); it may be truncated or not a NumPy file; "
                "save the movie again with numpy.save",
                path=path,
            ) from err
        except (OSError, EOFError) as err:
            raise InputError(
                f"cannot read as a .npy file ({err}); check that it is a complete NumPy file "
                "written by numpy.save",
                path=path,
            ) from err
        if not isinstance(array, np.ndarray):
            raise InputError(
                "is not a single array; save the movie with numpy.save (not numpy.savez)",
                path=path,
            )
        super().__init__(array, path=path, metadata={})

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {"path": self.path}

    def close(self) -> None:
        """Drop the memory map (it is unmapped once no view holds it); later reads fail."""
        super().close()
        self._array = None
