"""Saving and loading trained models (one file, plain types and tensors only)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from calmdown import __version__
from calmdown.calibration import CalibrationStages, ScaleCalibration
from calmdown.config import Config
from calmdown.correction import ResidualCorrection
from calmdown.departure import DepartureVariance
from calmdown.errors import ModelFileError
from calmdown.io.write import write_atomic
from calmdown.noise import NoiseModel
from calmdown.pipeline import TrainedModel
from calmdown.samples import ErrorCorrelation

__all__ = ["FORMAT_VERSION", "load_model", "save_model"]

FORMAT = "calmdown-model"
FORMAT_VERSION = 12
"""Format written. 4: the final calibration is a list of stages. 5: one guard null scale per
evidence window. 6: the model settings may ask for neighbouring planes as context (an older
calmdown would not know the setting). 7: a final calibration stage by the prior's deviation from
the mean image (an older calmdown would read it as another feature). 8: the final variance is
averaged over frames. 9: the noise model records the values the recording clipped at
(``clip_low``, ``clip_high``; an older calmdown would not know them). 10: the prior's variance
takes the timing term before the final stages (``final_calibration["timing"]``; an older
calmdown would leave it out and state intervals too narrow where the signal changes). 11: the
final stages bin pixels by the prior's variance without the timing term and scale the whole
(``final_calibration["timing_binned"]`` false; an older calmdown would bin by the whole). 12: the
prior's variance takes that of its departure from the mean image (``departure``; an older
calmdown would leave it out and state intervals too narrow where the prior departs)."""

READABLE_VERSIONS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
"""Formats read (a format 3 file's single final stage is read as one stage; a format 3 or 4
file's single guard null scale serves every evidence window; files before format 10 have no
timing term, files before format 12 no departure variance)."""


def save_model(model: TrainedModel, path: str | os.PathLike[str]) -> Path:
    """Write a model file atomically (``<path>.partial``, then renamed).

    Parameters
    ----------
    model : TrainedModel
        What :func:`calmdown.train` returned.
    path : path
        Destination, conventionally ``*.pt``.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(path)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "calmdown_version": model.version,
        "config": model.config.model_dump(mode="json"),
        "noise": model.noise.to_dict(),
        "scale0": float(model.scale0),
        "state_dict": model.state_dict,
        "calibration": model.calibration.to_dict(),
        "guard_null_scales": [float(v) for v in model.guard_null_scales],
        "correction": None if model.correction is None else model.correction.to_dict(),
        "error_correlation": model.error_correlation.to_dict(),
        "final_calibration": model.final_calibration.to_dict(),
        "departure": model.departure.to_dict(),
        "training": model.training,
        "heldout": model.heldout,
        "data_hash": model.data_hash,
    }
    return write_atomic(path, lambda partial: torch.save(payload, partial), "model")


def load_model(path: str | os.PathLike[str]) -> TrainedModel:
    """Read a model file written by :func:`save_model`.

    Raises
    ------
    ModelFileError
        If the file is missing, is not a calmdown model, is corrupt, or comes from an
        incompatible version; the message says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("no such model file; train one with `calmdown train`", path=path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        OSError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        IndexError,  # torch's weights-only unpickler on arbitrary bytes
        ValueError,
        KeyError,
        TypeError,
        UnicodeDecodeError,
    ) as err:
        raise ModelFileError(
            "not a readable calmdown model file (corrupt or another kind of file); "
            "retrain with `calmdown train`",
            path=path,
        ) from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(
            "not a calmdown model file; pass a file written by `calmdown train`", path=path
        )
    if data.get("format_version") not in READABLE_VERSIONS:
        raise ModelFileError(
            f"model file format {data.get('format_version')} (calmdown "
            f"{data.get('calmdown_version')}) cannot be read by calmdown {__version__} (format "
            f"{FORMAT_VERSION}); retrain the model with this version",
            path=path,
        )
    try:
        model = TrainedModel(
            config=_config(data),
            noise=NoiseModel.from_dict(data["noise"]),
            scale0=float(data["scale0"]),
            state_dict=data["state_dict"],
            calibration=ScaleCalibration(**data["calibration"]),
            guard_null_scales=tuple(
                float(v) for v in data.get("guard_null_scales", [data.get("guard_null_scale")])
            ),
            correction=(
                None
                if data.get("correction") is None
                else ResidualCorrection.from_dict(data["correction"])
            ),
            training=dict(data["training"]),
            heldout=dict(data["heldout"]),
            error_correlation=ErrorCorrelation.from_dict(data["error_correlation"]),
            final_calibration=CalibrationStages.from_dict(data["final_calibration"]),
            departure=(
                DepartureVariance.from_dict(data["departure"])
                if "departure" in data
                else DepartureVariance.identity()
            ),
            data_hash=str(data["data_hash"]),
            version=str(data["calmdown_version"]),
            path=str(path),
        )
        model.network(torch.device("cpu"))  # the weights must fit the network
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(
            f"model file is incomplete or damaged ({str(err).splitlines()[0]}); retrain with "
            "`calmdown train`",
            path=path,
        ) from err
    return model


def _config(data: dict) -> Config:
    """Return the model's settings.

    A model from before format 8 was calibrated without averaging its final variance over
    frames, so it is applied that way (``variance_frames`` 1).
    """
    config = Config.model_validate(data["config"])
    if int(data["format_version"]) < 8:
        config.inference.variance_frames = 1
    return config
