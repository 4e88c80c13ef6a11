"""Self-supervised training of the context network on the movie itself.

A plain PyTorch loop: random patches of random frames, the network predicts each frame from its
neighbours and the mean image, the loss is the marginal likelihood of the observed frame
(:mod:`calmdown.loss`). Frames are split into interleaved training and held-out runs; the
held-out loss drives early stopping and keeps the best weights. A wall-clock budget bounds the
run. :class:`Trainer.steps` is a generator that yields after every held-out evaluation, so a
CLI can show a progress bar and a GUI can cancel.

:meth:`Trainer.state_dict` and :meth:`Trainer.load_state_dict` capture and restore the whole
loop (weights, optimiser, step, random generators, early stopping, time spent), so a run
stopped between two steps and resumed gives bit for bit the weights of an uninterrupted run
with the same seed and settings on the same machine, provided it stops on ``max_steps`` or
early stopping: the time budget makes the step count depend on the machine's load. Each step
runs inside :func:`calmdown.checkpoint.defer_interrupts`, so under the CLI's signal handler an
interrupt waits for the step to end. See :mod:`calmdown.checkpoint` for the file.

Two guards keep one bad step from ending a run. Each step's gradient is clipped to
:data:`CLIP_FACTOR` times the median norm of the last :data:`CLIP_WINDOW` steps (a step whose
loss or gradient is not finite is skipped). If a held-out loss comes out worse than the untrained
network's (it predicts the mean image), training has diverged: the best weights come back, the
optimiser starts afresh and the learning rate is halved (:attr:`Trainer.recoveries` counts it).
A 600 s run on a 128 x 128 x 3000 movie once jumped from 0.657 to 15 at step ~2000 and never
came back before these guards.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from calmdown.checkpoint import defer_interrupts
from calmdown.config import ModelConfig, TrainConfig
from calmdown.context import MeanImage, context_indices
from calmdown.device import training_dtype
from calmdown.errors import InputError
from calmdown.loss import marginal_nll
from calmdown.neighbours import NEIGHBOUR_CHANNELS, NeighbourPlanes
from calmdown.network import ContextNet
from calmdown.noise import NoiseModel

__all__ = [
    "Segment",
    "TrainProgress",
    "Trainer",
    "TrainingResult",
    "held_out_mask",
    "make_network",
]

logger = logging.getLogger(__name__)

CLIP_FACTOR = 5.0
"""Gradients are clipped to this many times the median norm of recent steps."""

CLIP_WINDOW = 100
"""Steps whose gradient norms set the clipping threshold (none before a fifth of them)."""

EARLY_STOP_FROM = 0.8
"""Fraction of the planned run (steps or time budget, whichever is further along) from which
held-out evaluations without improvement count towards early stopping: the last fifth, where
the cosine schedule has brought the learning rate to 14 % of its peak or less. Before that the
held-out loss wanders by its noise around a level that the smaller steps later go below. Given
300 s and no step cap, patience counted from the start stopped runs at step 2400 of the
~7000-10000 there was time for, 7.8-8.6 % short of the best loss found (of the improvement
over the untrained network); counted from halfway, at step 5500, 5.5 % short; counted in the
last fifth, the run took 10971 steps and came 1.23 % short. A 600 s run without early stopping
improved its held-out loss at gaps of up to 20 evaluations in its second half, and 12 in its
last fifth (``benchmarks/results/training_plateau.txt``, session 39)."""


def held_out_mask(frames: np.ndarray, val_fraction: float, n_frames: int) -> np.ndarray:
    """Which global frame indices are held out.

    Runs of up to 16 consecutive frames, one run in every ``1 / val_fraction``, so that held-out
    frames are spread over the whole movie (bleaching, drift) and come in runs long enough for
    the guard's window statistics. Short movies get shorter runs, so at least two exist.
    """
    period = max(2, round(1.0 / val_fraction))
    run = int(np.clip(n_frames // (2 * period), 1, 16))
    return (np.asarray(frames) // run) % period == period // 2


def make_network(model: ModelConfig) -> ContextNet:
    """Return a new, untrained :class:`ContextNet` of the shape ``model`` gives."""
    return ContextNet(
        model.context_frames,
        model.width,
        model.use_mean_image,
        neighbour_channels=NEIGHBOUR_CHANNELS if model.plane_context else 0,
    )


@dataclass
class Segment:
    """Contiguous frames of the movie held in memory for training (photon units).

    ``planes``: the same frames of the neighbouring planes, ``(T, N, Y, X)``, for a network
    with plane context.
    """

    start: int
    photons: np.ndarray
    planes: np.ndarray | None = None


@dataclass
class TrainProgress:
    """State after one held-out evaluation."""

    step: int
    max_steps: int
    seconds: float
    train_loss: float
    val_loss: float
    best_val_loss: float
    phase: str = "training"
    """``"training"``, or ``"calibrating"``: sent once when the loop has ended and the fit of
    the intervals on held-out frames begins (it takes a while at large frames)."""


@dataclass
class TrainingResult:
    """What training produced."""

    state_dict: dict[str, torch.Tensor]
    steps: int
    seconds: float
    best_val_loss: float
    stopped_because: str
    history: list[TrainProgress] = field(default_factory=list)
    recoveries: int = 0
    """Times training diverged and went back to its best weights at half the learning rate."""


class Trainer:
    """Train a :class:`ContextNet` on segments of one movie.

    Parameters
    ----------
    segments : list of Segment
        Frames in memory, photon units; each at least ``2K + 1`` frames long.
    mean_image : MeanImage
        Running mean image of the whole movie (photon units).
    noise : NoiseModel
        The movie's noise model.
    scale0 : float
        Brightness scale (photons) that network inputs are divided by.
    model_config, train_config : ModelConfig, TrainConfig
        Settings.
    device : torch.device
        Where to train.
    planes : NeighbourPlanes, optional
        The neighbouring planes, for a network with plane context (one input channel each);
        each segment then holds their frames (``Segment.planes``).
    init_state : dict of str to Tensor, optional
        Weights to start from (fine-tuning a network trained on another movie) instead of a
        random initialisation; they must fit ``model_config``'s network. Training then runs
        at ``train_config.fine_tune_learning_rate``. The divergence guard still compares with
        the untrained network, and the best weights (those given, if nothing beats them on
        this movie's held-out frames) are kept.

    Notes
    -----
    The loop's state lives on the trainer (:attr:`step`, :attr:`seconds`,
    :attr:`best_val_loss`, :attr:`history`, :attr:`stopped_because`, and private early-stopping
    fields), so that :meth:`state_dict` can save it between steps and :meth:`steps` continues
    from a state given to :meth:`load_state_dict`.
    """

    def __init__(
        self,
        segments: list[Segment],
        mean_image: MeanImage,
        noise: NoiseModel,
        scale0: float,
        *,
        model_config: ModelConfig,
        train_config: TrainConfig,
        device: torch.device,
        planes: NeighbourPlanes | None = None,
        init_state: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.segments = segments
        self.mean_image = mean_image
        self.noise = noise
        self.scale0 = float(scale0)
        self.mcfg = model_config
        self.tcfg = train_config
        self.device = device
        self.rng = np.random.default_rng(train_config.seed)
        torch.manual_seed(train_config.seed)
        self.planes = planes
        # Channels-last on a CPU with oneDNN: its convolutions ran 15-25 % faster per step in
        # that layout here (weights and batches both; inputs alone gained little).
        self._layout = (
            torch.channels_last
            if device.type == "cpu" and torch.backends.mkldnn.is_available()
            else torch.contiguous_format
        )
        self.net = make_network(model_config).to(device).to(memory_format=self._layout)
        self._autocast = training_dtype(device, train_config.precision)
        h, w = segments[0].photons.shape[1:]
        self.patch = min(train_config.patch_size, h // 8 * 8, w // 8 * 8)
        if self.patch < 8:
            raise ValueError(f"frames of {h} x {w} pixels are too small to train on (need 8 x 8)")
        # Candidate target frames (local index per segment), split train / held out.
        self._train_t: list[np.ndarray] = []
        self._val_t: list[np.ndarray] = []
        for seg in segments:
            local = np.arange(seg.photons.shape[0])
            held = held_out_mask(seg.start + local, train_config.val_fraction, mean_image.n_frames)
            self._train_t.append(local[~held])
            self._val_t.append(local[held])
        n_train = np.array([len(t) for t in self._train_t], float)
        if n_train.sum() == 0 or sum(len(t) for t in self._val_t) == 0:
            raise InputError(
                "too few frames to hold some out for early stopping and calibration; pass a "
                "longer movie (at least 20 frames)"
            )
        self._seg_p = n_train / n_train.sum()
        self._val_batches = self._fixed_val_batches(n_patches=48)
        self.read_noise2 = noise.read_noise_photons**2
        # Where the recording clipped at a ceiling: scaled photon units, a hair below it.
        ceiling = noise.ceiling_photons
        self._ceiling = None if ceiling is None else (ceiling - 1e-6) / self.scale0
        # Divergence means worse than the untrained network, also when fine-tuning: a given
        # network's own start is no baseline (near its optimum the held-out loss moves up and
        # down by chance, and halving the rate on every such step would stall training).
        self._untrained_val_loss: float | None = None
        if init_state is not None:
            self._untrained_val_loss = self.validate()
            self.net.load_state_dict(init_state)  # copies into the tensors, keeping the layout
        self.learning_rate = (
            train_config.learning_rate
            if init_state is None
            else train_config.fine_tune_learning_rate
        )
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.learning_rate)
        # Loop state: all of it goes into a checkpoint (see state_dict).
        self.step = 0
        self.seconds = 0.0
        self.best_val_loss: float | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._bad = 0
        self._running: list[float] = []
        self.history: list[TrainProgress] = []
        self.stopped_because: str | None = None
        self.initial_val_loss: float | None = None  # the divergence guard's baseline
        self.start_val_loss: float | None = None  # before the first step
        self.recoveries = 0
        self._lr_scale = 1.0
        self._grad_norms: deque[float] = deque(maxlen=CLIP_WINDOW)
        self._dirty = False

    @property
    def precision(self) -> str:
        """Arithmetic of the training steps: ``"bfloat16"`` or ``"float32"``."""
        return "bfloat16" if self._autocast == torch.bfloat16 else "float32"

    # -- batches ---------------------------------------------------------------------------
    def _crop(
        self, seg_i: int, t: int, y0: int, x0: int, size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target, context frames and mean image of one patch (scaled photon units)."""
        p = size or self.patch
        seg = self.segments[seg_i]
        n = seg.photons.shape[0]
        ctx = context_indices(t, self.mcfg.context_frames, n)
        ys, xs = slice(y0, y0 + p), slice(x0, x0 + p)
        target = seg.photons[t, ys, xs]
        frames = seg.photons[ctx, ys, xs]  # crop while indexing: never copy whole frames
        if self.planes is not None:
            assert seg.planes is not None
            deviation = seg.planes[t, :, ys, xs] - self.planes.crop_means(seg.start + t, ys, xs)
            frames = np.concatenate([frames, deviation])
        # Leave-one-out in float64 (training's inputs as they have always been computed).
        blended, own = self.mean_image.blend(np.array([seg.start + t]), region=(ys, xs))
        mean = (blended[0] - own[0] * target) / (1.0 - own[0])
        s = 1.0 / self.scale0
        return target * s, frames * s, mean.astype(np.float32) * s

    def _batch(self, picks: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, ...]:
        parts = [self._crop(*p) for p in picks]
        target = torch.from_numpy(np.stack([p[0] for p in parts])[:, None])
        frames = torch.from_numpy(np.stack([p[1] for p in parts]))
        mean = torch.from_numpy(np.stack([p[2] for p in parts])[:, None])
        return target, frames, mean

    def _random_picks(self, n: int) -> list[tuple[int, int, int, int]]:
        h, w = self.segments[0].photons.shape[1:]
        picks = []
        for _ in range(n):
            s = int(self.rng.choice(len(self.segments), p=self._seg_p))
            t = int(self.rng.choice(self._train_t[s]))
            y0 = int(self.rng.integers(0, h - self.patch + 1))
            x0 = int(self.rng.integers(0, w - self.patch + 1))
            picks.append((s, t, y0, x0))
        return picks

    def _fixed_val_batches(self, n_patches: int) -> list[tuple[torch.Tensor, ...]]:
        rng = np.random.default_rng(self.tcfg.seed + 1)
        h, w = self.segments[0].photons.shape[1:]
        picks = []
        segs = [i for i, t in enumerate(self._val_t) if len(t)]
        for _ in range(n_patches):
            s = int(rng.choice(segs))
            t = int(rng.choice(self._val_t[s]))
            picks.append(
                (
                    s,
                    t,
                    int(rng.integers(0, h - self.patch + 1)),
                    int(rng.integers(0, w - self.patch + 1)),
                )
            )
        bs = self.tcfg.batch_size
        return [self._batch(picks[i : i + bs]) for i in range(0, len(picks), bs)]

    def _augment(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k = int(self.rng.integers(0, 4))
        flip = bool(self.rng.integers(0, 2))
        reverse = bool(self.rng.integers(0, 2))
        out = []
        for i, x in enumerate(tensors):
            x = torch.rot90(x, k, dims=(2, 3))
            if flip:
                x = torch.flip(x, dims=(3,))
            if reverse and i == 1:  # time reversal of the context frames (not the planes)
                n_ctx = 2 * self.mcfg.context_frames
                x = torch.cat([torch.flip(x[:, :n_ctx], dims=(1,)), x[:, n_ctx:]], dim=1)
            out.append(x)
        return tuple(out)

    def _loss(self, target: torch.Tensor, frames: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        # Steps in bfloat16 where the device has it natively; held-out evaluations (which pick
        # the weights kept) and the loss in float32.
        dtype = self._autocast if self.net.training else None
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            loc, scale = self.net(
                mean.to(self.device).contiguous(memory_format=self._layout),
                frames.to(self.device).contiguous(memory_format=self._layout),
            )
        return marginal_nll(
            target.to(self.device),
            loc.float(),
            scale.float(),
            scale0=self.scale0,
            read_noise2=self.read_noise2,
            ratio=self.noise.variance_ratio,
            ceiling=self._ceiling,
        )

    @torch.no_grad()
    def validate(self) -> float:
        """Mean held-out loss on a fixed set of patches."""
        self.net.eval()
        losses = [float(self._loss(*b)) for b in self._val_batches]
        self.net.train()
        return float(np.mean(losses))

    # -- the loop --------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Whether training has begun (the first held-out evaluation is done)."""
        return self.best_val_loss is not None

    @property
    def finished(self) -> bool:
        """Whether the loop has stopped (max steps, early stopping or time budget)."""
        return self.stopped_because is not None

    @contextmanager
    def _step_scope(self) -> Iterator[None]:
        """Mark the state inconsistent while the block runs; hold interrupts until its end."""
        with defer_interrupts():
            self._dirty = True
            yield
            self._dirty = False

    def _step(self, start: float) -> TrainProgress | None:
        """Take one optimisation step (and a held-out evaluation when one is due)."""
        cfg = self.tcfg
        step = self.step + 1
        budget = cfg.time_budget_s
        progress = step / cfg.max_steps
        if budget is not None:
            progress = max(progress, (time.perf_counter() - start) / budget)
        cosine = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group in self.opt.param_groups:
            group["lr"] = self.learning_rate * self._lr_scale * cosine
        batch = self._augment(*self._batch(self._random_picks(cfg.batch_size)))
        loss = self._loss(*batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        limit = math.inf
        if len(self._grad_norms) >= CLIP_WINDOW // 5:
            limit = CLIP_FACTOR * float(np.median(self._grad_norms))
        norm = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), limit))
        value = loss.item()
        if math.isfinite(norm) and math.isfinite(value):
            self.opt.step()
            self._running.append(value)
            self._grad_norms.append(norm)
        else:
            logger.warning("step %d: loss or gradient not finite, step skipped", step)
        self.step = step
        out_of_time = budget is not None and time.perf_counter() - start >= budget
        info = None
        if step % cfg.val_every == 0 or step == cfg.max_steps or out_of_time:
            val = self.validate()
            assert self.best_val_loss is not None
            if not math.isfinite(val) or (
                self.initial_val_loss is not None and val > self.initial_val_loss
            ):
                self._recover(step, val)
            if val < self.best_val_loss - 1e-5 * abs(self.best_val_loss):
                self.best_val_loss, self._bad = val, 0
                self._best_state = copy.deepcopy(self.net.state_dict())
            elif progress >= EARLY_STOP_FROM:  # patience counts in the run's last part only
                self._bad += 1
            info = TrainProgress(
                step=step,
                max_steps=cfg.max_steps,
                seconds=time.perf_counter() - start,
                train_loss=float(np.mean(self._running)) if self._running else math.nan,
                val_loss=val,
                best_val_loss=self.best_val_loss,
            )
            self._running = []
            self.history.append(info)
            logger.debug("step %d train %.5f val %.5f", step, info.train_loss, val)
            if out_of_time:
                self.stopped_because = "time_budget"
            elif self._bad >= cfg.patience:
                self.stopped_because = "early_stopping"
            elif step >= cfg.max_steps:
                self.stopped_because = "max_steps"
        self.seconds = time.perf_counter() - start
        return info

    def _recover(self, step: int, val: float) -> None:
        """Go back to the best weights with a fresh optimiser at half the learning rate."""
        assert self._best_state is not None
        self.recoveries += 1
        self._lr_scale *= 0.5
        logger.warning(
            "step %d: held-out loss %.4g is worse than the untrained network's (%.4g): "
            "training diverged; back to the best weights at half the learning rate",
            step,
            val,
            self.initial_val_loss,
        )
        self.net.load_state_dict(self._best_state)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.learning_rate)
        self._grad_norms.clear()

    def steps(
        self,
        *,
        checkpoint: Callable[[dict[str, Any]], object] | None = None,
        checkpoint_every_s: float = 30.0,
    ) -> Iterator[TrainProgress]:
        """Train; yield after each held-out evaluation. The result is in :attr:`result`.

        A trainer restored with :meth:`load_state_dict` continues where it stopped: the step
        count, the time budget and early stopping carry on.

        Parameters
        ----------
        checkpoint : callable, optional
            Called with :meth:`state_dict` every ``checkpoint_every_s`` seconds of training
            (between steps) and once when the loop stops.
        checkpoint_every_s : float
            Seconds between checkpoints.

        Yields
        ------
        TrainProgress
        """
        start = time.perf_counter() - self.seconds  # time already spent carries on
        last_save = time.perf_counter()
        if not self.started:
            with self._step_scope():
                self.best_val_loss = self.validate()
                self.start_val_loss = self.best_val_loss
                self.initial_val_loss = self.best_val_loss
                if self._untrained_val_loss is not None:
                    self.initial_val_loss = max(self.best_val_loss, self._untrained_val_loss)
                self._best_state = copy.deepcopy(self.net.state_dict())
                self.seconds = time.perf_counter() - start
        while not self.finished:
            with self._step_scope():
                info = self._step(start)
                due = time.perf_counter() - last_save >= checkpoint_every_s
                if checkpoint is not None and (due or self.finished):
                    checkpoint(self.state_dict_unchecked())
                    last_save = time.perf_counter()
            if info is not None:
                yield info
        assert self._best_state is not None and self.best_val_loss is not None
        self.net.load_state_dict(self._best_state)
        self.net.eval()
        self.result = TrainingResult(
            state_dict={k: v.detach().cpu().contiguous() for k, v in self._best_state.items()},
            steps=self.step,
            seconds=self.seconds,
            best_val_loss=self.best_val_loss,
            stopped_because=self.stopped_because or "max_steps",
            history=list(self.history),
            recoveries=self.recoveries,
        )

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stands.

        Network and optimiser state, step count, random generators (NumPy and PyTorch), the
        early-stopping state (best held-out loss and weights, evaluations without improvement,
        history) and the training time spent. Plain types and tensors only (loadable with
        ``torch.load(..., weights_only=True)``); tensors may share memory with the trainer.

        Returns
        -------
        dict
            For :meth:`load_state_dict`.

        Raises
        ------
        RuntimeError
            If the trainer was stopped in the middle of a step (an exception raised inside
            it), when its state is not consistent.
        """
        if self._dirty:
            raise RuntimeError(
                f"training was interrupted in the middle of step {self.step + 1}, so its state "
                "is not consistent"
            )
        return self.state_dict_unchecked()

    def state_dict_unchecked(self) -> dict[str, Any]:
        """:meth:`state_dict` without the consistency check (for use between steps)."""
        cuda_rng = None
        if self.device.type == "cuda":
            cuda_rng = torch.cuda.get_rng_state(self.device)
        return {
            "step": self.step,
            "seconds": float(self.seconds),
            "net": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "best_state": self._best_state,
            "best_val_loss": self.best_val_loss,
            "bad": self._bad,
            "running": [float(x) for x in self._running],
            "history": [asdict(h) for h in self.history],
            "stopped_because": self.stopped_because,
            "initial_val_loss": self.initial_val_loss,
            "start_val_loss": self.start_val_loss,
            "recoveries": self.recoveries,
            "lr_scale": self._lr_scale,
            "learning_rate": self.learning_rate,
            "grad_norms": [float(x) for x in self._grad_norms],
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (made by a trainer of the same settings).

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned (possibly through ``torch.save`` /
            ``torch.load``).

        Raises
        ------
        KeyError, ValueError, RuntimeError
            If the state is incomplete or does not fit the network.
        """
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optimizer"])
        best = state["best_state"]
        self._best_state = None if best is None else {k: v.to(self.device) for k, v in best.items()}
        self.best_val_loss = (
            None if state["best_val_loss"] is None else float(state["best_val_loss"])
        )
        self._bad = int(state["bad"])
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])
        self._running = [float(x) for x in state["running"]]
        self.history = [TrainProgress(**h) for h in state["history"]]
        self.stopped_because = state["stopped_because"]
        # Checkpoints written before the divergence guards lack these (such a resumed run
        # has no baseline to call a held-out loss diverged against).
        initial = state.get("initial_val_loss")
        self.initial_val_loss = None if initial is None else float(initial)
        start = state.get("start_val_loss", initial)
        self.start_val_loss = None if start is None else float(start)
        self.recoveries = int(state.get("recoveries", 0))
        self._lr_scale = float(state.get("lr_scale", 1.0))
        # A fine-tuning run resumed without its init keeps its own rate.
        self.learning_rate = float(state.get("learning_rate", self.learning_rate))
        self._grad_norms = deque(
            (float(x) for x in state.get("grad_norms", [])), maxlen=CLIP_WINDOW
        )
        rng_state = dict(state["numpy_rng"])
        if rng_state.get("bit_generator") != type(self.rng.bit_generator).__name__:
            raise ValueError(f"random generator {rng_state.get('bit_generator')} is not ours")
        self.rng.bit_generator.state = rng_state
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.net.train()
        self._dirty = False

    def run(self) -> TrainingResult:
        """Train to the end without progress reports."""
        for _ in self.steps():
            pass
        return self.result
