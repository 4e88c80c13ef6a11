"""napari sample-data contribution: calmdown's simulated demo movie and its ground truth."""

from __future__ import annotations

from typing import Any

from calmdown.simulate import sample_movie

__all__ = ["make_sample_movie"]


def make_sample_movie() -> list[tuple[Any, dict[str, Any], str]]:
    """Return the demo movie (600 x 96 x 96, 1 photon) and its noise-free truth as layers.

    Returns
    -------
    list of (data, metadata, "image")
        ``calmdown sample (raw)``, what the microscope records, and ``calmdown sample
        (truth)``, the expected value of every pixel (hidden, for comparison).

    Examples
    --------
    >>> [meta["name"] for _, meta, _ in make_sample_movie()]
    ['calmdown sample (truth)', 'calmdown sample (raw)']
    """
    sim = sample_movie()
    limits = (float(sim.clean.min()), float(sim.clean.max()))
    return [
        (
            sim.clean,
            {"name": "calmdown sample (truth)", "visible": False, "contrast_limits": limits},
            "image",
        ),
        (sim.raw, {"name": "calmdown sample (raw)", "contrast_limits": limits}, "image"),
    ]
