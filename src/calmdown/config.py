"""Configuration of calmdown: pydantic models, saved with every output.

Every option a user can set lives here, with its unit and what to change when it is wrong.
Unknown keys are rejected (``extra="forbid"``), so a typo is an error, not a silently ignored
setting.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from calmdown.errors import InputError

__all__ = [
    "Config",
    "GuardConfig",
    "InferenceConfig",
    "ModelConfig",
    "NoiseConfig",
    "TrainConfig",
    "chunk_options",
    "make_config",
]

CHUNK_PIXELS = 1 << 22
"""Most pixels (frames x pixels per frame) of the output frames of one chunk by default
(``InferenceConfig.chunk_pixels``): 16 frames of 512 x 512. At 512 x 512 with
``--interval 0.9`` (session 35, in-process VmHWM and frames/s, the same model), 64-frame chunks
ran at 6.2 frames/s against 4.2 and peaked at 3.0 GB against 2.2: the guard's window sums read
the frames around a chunk's output again in every chunk. The default keeps the peak of a
512 x 512 x 10000 movie under 2 GB; ``--chunk-frames`` trades memory for speed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoiseConfig(_Strict):
    """Detector noise model: estimated from the movie unless given here."""

    gain: float | None = Field(default=None, gt=0)
    """Photon-transfer gain in ADU per detected photon (PMT excess noise included).
    ``None`` estimates it from the movie."""

    offset: float | None = None
    """Baseline in ADU of a pixel that receives no light. ``None`` estimates it."""

    read_noise: float | None = Field(default=None, ge=0)
    """Standard deviation of the additive (photon-independent) noise in ADU. ``None``
    estimates it."""

    max_frames: int = Field(default=2000, ge=8)
    """At most this many frames (spread over the movie) are used for the estimate."""


class ModelConfig(_Strict):
    """The context network (the prior)."""

    context_frames: int = Field(default=3, ge=1, le=16)
    """K: the network sees frames t-K..t-1 and t+1..t+K (never frame t itself)."""

    use_mean_image: bool = True
    """Feed the time-averaged image as an input channel (the static-morphology prior)."""

    plane_context: bool = False
    """Feed the neighbouring planes of a volume recording at the same frame as input channels
    (see :mod:`calmdown.neighbours`); applying the model then needs them too."""

    mean_window: int = Field(default=500, ge=16)
    """Frames per block of the running mean image; blocks are interpolated linearly in time,
    so slow local drift is followed, and pulled toward the whole movie's mean where they differ
    by no more than their noise. Bleaching is followed frame by frame by a brightness trend
    fitted within half this many frames of each frame. A movie shorter than this uses one
    block (with the trend)."""

    width: int = Field(default=32, ge=4, le=256)
    """Channels of the finest level of the network (half resolution); deeper levels use 1.5x
    and 2x."""


class TrainConfig(_Strict):
    """Self-supervised training on the movie itself."""

    patch_size: int = Field(default=64, ge=16)
    """Side in pixels of the square training patches (multiple of 8)."""

    batch_size: int = Field(default=16, ge=1)
    """Patches per optimisation step."""

    max_steps: int = Field(default=20000, ge=1)
    """Upper bound on optimisation steps. The time budget is what ends a default run: a cap of
    4000 ended the 180 s budget at ~125 s on an AVX512-BF16 CPU, 4.8 % short of the plateau,
    where the whole budget (5860 steps) came 3.9 % short (prior PSNR 42.52 against 42.61 dB;
    ``benchmarks/results/training_plateau.txt``, session 39)."""

    time_budget_s: float | None = Field(default=180.0, gt=0)
    """Wall-clock budget for training in seconds (``None``: no budget)."""

    learning_rate: float = Field(default=2e-3, gt=0)
    """Adam learning rate (cosine-decayed over the planned steps)."""

    fine_tune_learning_rate: float = Field(default=5e-4, gt=0)
    """Learning rate instead of ``learning_rate`` when training starts from a given network
    (``init``, fine-tuning). From a network trained on another movie of the same kind,
    ``learning_rate`` made the held-out loss worse within 100 steps, twice in a row, until
    the divergence guard had halved it to this."""

    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    """Fraction of frames held out for early stopping and calibration."""

    val_every: int = Field(default=100, ge=1)
    """Steps between held-out evaluations."""

    patience: int = Field(default=8, ge=1)
    """Stop after this many held-out evaluations without improvement, counted in the last fifth
    of the run only (:data:`calmdown.train.EARLY_STOP_FROM`)."""

    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Arithmetic of the training steps' convolutions: ``bfloat16`` (PyTorch autocast; the
    loss, the held-out evaluations and the weights stay float32) where the device computes it
    natively, an AVX512-BF16 or AMX CPU or an Ampere or later GPU, else ``float32``
    (``auto``). Inference is float32 either way. See :func:`calmdown.device.training_dtype`."""

    max_train_frames: int = Field(default=4000, ge=16)
    """At most this many frames are loaded into memory for training."""

    seed: int = 0
    """Seed of every random choice in training (patch positions, initial weights)."""

    @field_validator("patch_size")
    @classmethod
    def _multiple_of_4(cls, value: int) -> int:
        if value % 8:
            raise ValueError(
                f"patch_size must be a multiple of 8, got {value}; use {value // 8 * 8}"
            )
        return value


class GuardConfig(_Strict):
    """The surprise guard: lets the data win where they disagree with the prior beyond noise."""

    enabled: bool = True
    """Switch the guard off to get the plain Bayesian posterior."""

    window_frames: int = Field(default=31, ge=1)
    """Frames of the square space-time window over which evidence of a surprise is pooled
    (odd); the single-pixel and line windows below pool it over other shapes."""

    window_pixels: int = Field(default=3, ge=1)
    """Side in pixels of that square window (odd)."""

    pixel_windows: tuple[int, ...] = (31,)
    """Frames of single-pixel evidence windows (odd, each at least 3).

    The prior blurs an event it half sees into the process's neighbours, so in a square
    window the event's excess and the neighbours' deficit cancel; one pixel alone keeps it.
    Short windows cost denoising quality: the largest of a short window's statistics over
    the local frames is often large by chance, so the guard acts on noise."""

    line_frames: int = Field(default=31, ge=3)
    """Frames of the straight-line evidence windows (odd)."""

    line_pixels: int = Field(default=5, ge=1)
    """Length in pixels of straight-line evidence windows, in four orientations (vertical,
    horizontal, both diagonals), which follow a thin process; 1 switches them off (odd)."""

    local_frames: int = Field(default=11, ge=3)
    """Frames of the smaller window whose residual replaces the prior where the guard acts.

    The frame being denoised is left out of it, so it must span more than one frame."""

    local_pixels: int = Field(default=1, ge=1)
    """Side in pixels of that smaller window."""

    prior_odds: float = Field(default=1e-2, gt=0, lt=1)
    """Prior probability that a pixel's windows hold a surprise (a rare event), shared out
    equally between the evidence windows so that more windows do not mean more false alarms."""

    correction: bool = True
    """Apply the fitted soma-scale residual correction (:mod:`calmdown.correction`)."""

    correction_frames: int = Field(default=3, ge=1)
    """Frames of the window whose evidence selects the correction's gain (odd)."""

    correction_pixels: int = Field(default=9, ge=1)
    """Side in pixels of that window and of the frame-t ring whose residual is added back."""

    slab_ratio: float = Field(default=100.0, gt=1)
    """Variance of a surprise relative to the null variance of the window mean."""

    @field_validator("pixel_windows")
    @classmethod
    def _pixel_windows(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for frames in value:
            if frames < 3 or frames % 2 == 0:
                raise ValueError(
                    f"pixel windows need an odd number of frames, at least 3; got {frames}"
                )
        return tuple(value)

    @field_validator(
        "window_frames",
        "window_pixels",
        "line_frames",
        "line_pixels",
        "local_frames",
        "local_pixels",
        "correction_frames",
        "correction_pixels",
    )
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"window sizes must be odd, got {value}; use {value + 1}")
        return value


class InferenceConfig(_Strict):
    """Applying a trained model to a movie."""

    output: Literal["posterior", "prior"] = "posterior"
    """``posterior``: Bayes combination of prior and the pixel's own value (the denoised
    movie); ``prior``: the context network's prediction alone, for comparison."""

    chunk_frames: int = Field(default=128, ge=1)
    """Most frames processed at once (large frames get fewer, see ``chunk_pixels``); memory
    grows with this, never with the movie's length."""

    chunk_pixels: int | None = Field(default=CHUNK_PIXELS, ge=1)
    """Most pixels (frames x pixels per frame) of the frames one chunk outputs: 16 frames of
    512 x 512 (:data:`CHUNK_PIXELS`). None: ``chunk_frames`` frames
    whatever their size, as ``--chunk-frames`` asks. Larger chunks run faster and hold more
    memory: at 512 x 512 with ``--interval 0.9``, 64-frame chunks ran 1.45x faster and
    peaked 0.9 GB higher (``benchmarks/results/speed.txt``)."""

    tile_size: int = Field(default=1024, ge=32)
    """Side of the spatial tiles; larger frames are tiled with overlap."""

    tile_overlap: int = Field(default=32, ge=0)
    """Overlap in pixels between tiles; blended linearly so there are no seams."""

    batch_frames: int = Field(default=8, ge=1)
    """Most frames per network call (fewer for large frames: about 4 megapixels per call)."""

    probe_stride: int = Field(default=4, ge=0)
    """Every this many frames the network is run again on inputs perturbed by their own
    noise, to measure how much input noise reaches the prior (part of its uncertainty that
    is known without ground truth); 0 turns it off. Costs ``1 / probe_stride`` of a pass."""

    variance_frames: int = Field(default=9, ge=1)
    """The prior's final variance (after the calibration stages) is averaged over this many
    frames centred on each frame: its error changes slowly, while the stated variance swung
    from frame to frame (``benchmarks/results/calibration.txt``). 1 turns it off."""

    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    """What executes the network on a CPU: ``onnxruntime`` (about twice as fast; ``pip install
    calmdown[onnx]``), ``torch``, or ``auto`` (ONNX Runtime when installed). A GPU always runs
    PyTorch. See :mod:`calmdown.runtime`."""

    guard: GuardConfig = Field(default_factory=GuardConfig)
    """The surprise guard."""


class Config(_Strict):
    """Everything calmdown needs to denoise a movie."""

    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    device: str = "auto"
    """``auto`` (a GPU when present, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    threads: int | None = Field(default=None, ge=1)
    """CPU threads for PyTorch (``None``: PyTorch's default)."""


_SECTIONS = {
    "noise": NoiseConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "inference": InferenceConfig,
    "guard": GuardConfig,
}


def _none_is_a_value(name: str) -> bool:
    """Whether ``name=None`` sets a setting (it may be None, its default is not)."""
    for section in _SECTIONS.values():
        field = section.model_fields.get(name)
        if field is not None:
            return field.default is not None and type(None) in get_args(field.annotation)
    return False


def chunk_options(chunk_frames: int | None) -> dict[str, Any]:
    """Flat options for frames per chunk asked for: that many, whatever their size.

    ``chunk_frames`` given (not None) lifts the pixel cap ``chunk_pixels``; a config on its
    own keeps its cap, so frames set in it stay an upper bound.
    """
    return {} if chunk_frames is None else {"chunk_pixels": None}


def make_config(base: Config | None = None, **flat: Any) -> Config:
    """Build a :class:`Config` from flat keyword options.

    Parameters
    ----------
    base : Config, optional
        Starting point; defaults to ``Config()``.
    **flat
        Options by their field name in any section (``context_frames=4``, ``gain=2.5``,
        ``time_budget_s=60``, ``output="prior"``, ``device="cpu"``). ``None`` keeps the
        default (CLI options left unset), except for a setting whose own value may be ``None``
        while its default is not: ``time_budget_s=None`` means no time budget.

    Returns
    -------
    Config
        A validated copy; ``base`` is not modified.

    Raises
    ------
    InputError
        If a name is unknown or a value is invalid; the message says which and why.

    Examples
    --------
    >>> make_config(context_frames=2, time_budget_s=30).model.context_frames
    2
    """
    data = (base or Config()).model_dump()
    sections = {
        "noise": data["noise"],
        "model": data["model"],
        "train": data["train"],
        "inference": data["inference"],
        "guard": data["inference"]["guard"],
    }
    for name, value in flat.items():
        if value is None and not _none_is_a_value(name):
            continue
        if name in ("device", "threads"):
            data[name] = value
            continue
        owners = [sec for sec, model in _SECTIONS.items() if name in model.model_fields]
        if not owners:
            known = sorted({f for m in _SECTIONS.values() for f in m.model_fields})
            raise InputError(f"unknown option {name!r}; known options: {', '.join(known)}")
        sections[owners[0]][name] = value
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        value = first.get("input")
        given = "" if isinstance(value, dict) or value is None else f" (given: {value!r})"
        raise InputError(f"invalid option {where}{given}: {first['msg']}") from err
