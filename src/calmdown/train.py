"""Self-supervised training of the context network on the movie itself.

A plain PyTorch loop: random patches of random frames, the network predicts each frame from its
neighbours and the mean image, the loss is the marginal likelihood of the observed frame
(:mod:`calmdown.loss`). Frames are split into interleaved training and held-out runs; the
held-out loss drives early stopping and keeps the best weights. A wall-clock budget bounds the
run. :class:`Trainer.steps` is a generator that yields after every held-out evaluation, so a
CLI can show a progress bar and a GUI can cancel.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from calmdown.config import ModelConfig, TrainConfig
from calmdown.context import MeanImage, context_indices
from calmdown.errors import InputError
from calmdown.loss import marginal_nll
from calmdown.network import ContextNet
from calmdown.noise import NoiseModel

__all__ = ["Segment", "TrainProgress", "Trainer", "TrainingResult", "held_out_mask"]

logger = logging.getLogger(__name__)


def held_out_mask(frames: np.ndarray, val_fraction: float, n_frames: int) -> np.ndarray:
    """Which global frame indices are held out.

    Runs of up to 16 consecutive frames, one run in every ``1 / val_fraction``, so that held-out
    frames are spread over the whole movie (bleaching, drift) and come in runs long enough for
    the guard's window statistics. Short movies get shorter runs, so at least two exist.
    """
    period = max(2, round(1.0 / val_fraction))
    run = int(np.clip(n_frames // (2 * period), 1, 16))
    return (np.asarray(frames) // run) % period == period // 2


@dataclass
class Segment:
    """Contiguous frames of the movie held in memory for training (photon units)."""

    start: int
    photons: np.ndarray


@dataclass
class TrainProgress:
    """State after one held-out evaluation."""

    step: int
    max_steps: int
    seconds: float
    train_loss: float
    val_loss: float
    best_val_loss: float


@dataclass
class TrainingResult:
    """What training produced."""

    state_dict: dict[str, torch.Tensor]
    steps: int
    seconds: float
    best_val_loss: float
    stopped_because: str
    history: list[TrainProgress] = field(default_factory=list)


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
        self.net = ContextNet(
            model_config.context_frames, model_config.width, model_config.use_mean_image
        ).to(device)
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
        lam, own = self.mean_image.weights(np.array([seg.start + t]))
        mean = np.tensordot(lam[0], self.mean_image.means[:, ys, xs], axes=1)
        mean = (mean - own[0] * target) / (1.0 - own[0])
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
            if reverse and i == 1:  # time reversal of the context frames
                x = torch.flip(x, dims=(1,))
            out.append(x)
        return tuple(out)

    def _loss(self, target: torch.Tensor, frames: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        loc, scale = self.net(mean.to(self.device), frames.to(self.device))
        return marginal_nll(
            target.to(self.device),
            loc,
            scale,
            scale0=self.scale0,
            read_noise2=self.read_noise2,
            ratio=self.noise.variance_ratio,
        )

    @torch.no_grad()
    def validate(self) -> float:
        """Mean held-out loss on a fixed set of patches."""
        self.net.eval()
        losses = [float(self._loss(*b)) for b in self._val_batches]
        self.net.train()
        return float(np.mean(losses))

    # -- the loop --------------------------------------------------------------------------
    def steps(self) -> Iterator[TrainProgress]:
        """Train; yield after each held-out evaluation. The result is in :attr:`result`."""
        cfg = self.tcfg
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate)
        start = time.perf_counter()
        best = self.validate()
        best_state = copy.deepcopy(self.net.state_dict())
        bad = 0
        history: list[TrainProgress] = []
        running: list[float] = []
        reason = "max_steps"
        step = 0
        budget = cfg.time_budget_s
        for step in range(1, cfg.max_steps + 1):
            elapsed = time.perf_counter() - start
            progress = step / cfg.max_steps
            if budget is not None:
                progress = max(progress, elapsed / budget)
            lr = cfg.learning_rate * (
                0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            )
            for group in opt.param_groups:
                group["lr"] = lr
            batch = self._augment(*self._batch(self._random_picks(cfg.batch_size)))
            loss = self._loss(*batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running.append(loss.item())
            out_of_time = budget is not None and time.perf_counter() - start >= budget
            if step % cfg.val_every == 0 or step == cfg.max_steps or out_of_time:
                val = self.validate()
                if val < best - 1e-5 * abs(best):
                    best, bad = val, 0
                    best_state = copy.deepcopy(self.net.state_dict())
                else:
                    bad += 1
                info = TrainProgress(
                    step=step,
                    max_steps=cfg.max_steps,
                    seconds=time.perf_counter() - start,
                    train_loss=float(np.mean(running)),
                    val_loss=val,
                    best_val_loss=best,
                )
                running = []
                history.append(info)
                logger.debug("step %d train %.5f val %.5f", step, info.train_loss, val)
                yield info
                if out_of_time:
                    reason = "time_budget"
                    break
                if bad >= cfg.patience:
                    reason = "early_stopping"
                    break
        self.net.load_state_dict(best_state)
        self.net.eval()
        self.result = TrainingResult(
            state_dict={k: v.detach().cpu() for k, v in best_state.items()},
            steps=step,
            seconds=time.perf_counter() - start,
            best_val_loss=best,
            stopped_because=reason,
            history=history,
        )

    def run(self) -> TrainingResult:
        """Train to the end without progress reports."""
        for _ in self.steps():
            pass
        return self.result
