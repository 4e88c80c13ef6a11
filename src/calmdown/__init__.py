"""calmdown: self-supervised denoising of calcium-imaging movies that says how sure it is.

The public API takes and returns arrays::

    import calmdown
    sim = calmdown.sample_movie()
    denoised = calmdown.denoise(sim.raw)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calmdown")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from calmdown.config import Config, make_config
from calmdown.errors import CalmdownError, InputError
from calmdown.io import open_movie
from calmdown.noise import NoiseModel, estimate_noise
from calmdown.pipeline import TrainedModel, apply, denoise, iter_apply, prepare, train
from calmdown.simulate import sample_movie, simulate

__all__ = [
    "CalmdownError",
    "Config",
    "InputError",
    "NoiseModel",
    "TrainedModel",
    "__version__",
    "apply",
    "denoise",
    "estimate_noise",
    "iter_apply",
    "make_config",
    "open_movie",
    "prepare",
    "sample_movie",
    "simulate",
    "train",
]
