"""napari plugin for calmdown: a reader, a denoising widget and a sample movie.

Installed with ``pip install "calmdown[napari]"``; napari finds it through the
``napari.manifest`` entry point (``calmdown.napari:napari.yaml``). Importing this package does
not import Qt or napari: :class:`CalmdownWidget` is loaded on first use, and
:func:`run_calmdown` (what the widget runs) works on plain arrays.

Examples
--------
>>> import calmdown
>>> from calmdown.napari import RunSettings, run_calmdown
>>> sim = calmdown.simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
>>> out = run_calmdown(sim.raw, RunSettings(time_budget_s=5, max_steps=5))
>>> out["interval_width"].shape
(60, 32, 32)
"""

from __future__ import annotations

from typing import Any

from calmdown.napari._reader import napari_get_reader, read_movies
from calmdown.napari._run import RunCancelled, RunProgress, RunSettings, iter_calmdown, run_calmdown

__all__ = [
    "CalmdownWidget",
    "RunCancelled",
    "RunProgress",
    "RunSettings",
    "iter_calmdown",
    "napari_get_reader",
    "read_movies",
    "run_calmdown",
]


def __getattr__(name: str) -> Any:
    if name == "CalmdownWidget":  # imports napari and Qt
        from calmdown.napari._widget import CalmdownWidget

        return CalmdownWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
