"""Training checkpoints: exact resumption, refusal of foreign checkpoints, reproducibility."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import calmdown
from calmdown.checkpoint import Checkpoint, Interrupted, defer_interrupts, handle_signals
from calmdown.errors import InputError
from calmdown.pipeline import TrainedModel, train
from calmdown.simulate import SimulatedMovie, simulate
from calmdown.train import Trainer, TrainProgress

# A fixed step count and a budget that is never reached: the run is deterministic.
OPTIONS: dict[str, Any] = {
    "max_steps": 20,
    "val_every": 5,
    "seed": 0,
    "time_budget_s": 1e6,
    "threads": 1,
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """``threads=1`` sets PyTorch's thread count for the whole process: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def movie() -> SimulatedMovie:
    """Simulate a tiny seeded movie: 60 frames of 32 x 32."""
    return simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)


@pytest.fixture(scope="module")
def reference(movie: SimulatedMovie) -> TrainedModel:
    """Train without interruption: what resumed runs must reproduce."""
    before = torch.get_num_threads()
    try:
        return train(movie.raw, **OPTIONS)
    finally:
        torch.set_num_threads(before)


def _same_model(a: TrainedModel, b: TrainedModel) -> None:
    assert a.state_dict.keys() == b.state_dict.keys()
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), name
    assert a.training["steps"] == b.training["steps"]
    assert a.training["best_val_loss"] == b.training["best_val_loss"]
    assert a.training["stopped_because"] == b.training["stopped_because"]
    assert a.calibration.to_dict() == b.calibration.to_dict()
    assert a.heldout == b.heldout


class _Stop(Exception):
    """Ends a training run early without counting as an interrupt."""


def _stop_at(step: int, error: type[BaseException] = KeyboardInterrupt) -> Any:
    def progress(info: TrainProgress) -> None:
        if info.step >= step:
            raise error

    return progress


def _inside_step(monkeypatch: pytest.MonkeyPatch, step: int, action: Any) -> None:
    """Run ``action()`` inside the training loss of step ``step`` (mid-step, every run)."""
    calls = {"n": 0}
    loss = Trainer._loss

    def patched(self: Trainer, *batch: torch.Tensor) -> torch.Tensor:
        if self.net.training:
            calls["n"] += 1
            if calls["n"] == step:
                action()
        return loss(self, *batch)

    monkeypatch.setattr(Trainer, "_loss", patched)


def test_denoise_is_bitwise_reproducible(movie: SimulatedMovie) -> None:
    """Same seed, input and machine, a fixed step count: identical output, bit for bit."""
    a = calmdown.denoise(movie.raw, max_steps=10, seed=0, time_budget_s=1e6, threads=1)
    b = calmdown.denoise(movie.raw, max_steps=10, seed=0, time_budget_s=1e6, threads=1)
    assert a.dtype == np.float32 and a.shape == movie.raw.shape
    assert np.array_equal(a, b)


def test_signal_mid_step_then_resume_matches_uninterrupted(
    movie: SimulatedMovie,
    reference: TrainedModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGINT in the middle of a step: held to the step's end, checkpointed, resumed.

    The resumed model equals the uninterrupted one bit for bit (weights, calibration,
    held-out check). The signal is sent from inside step 7's loss, so it lands mid-step on
    every run (a timer 5 ms after the first evaluation sometimes fired between steps, where
    it is raised at once and nothing is held).
    """
    ckpt = tmp_path / "run.checkpoint.pt"
    _inside_step(monkeypatch, 7, lambda: os.kill(os.getpid(), signal.SIGINT))
    caplog.set_level(logging.DEBUG, logger="calmdown.checkpoint")
    with handle_signals(), pytest.raises(Interrupted):
        train(movie.raw, checkpoint=Checkpoint(ckpt), **OPTIONS)
    monkeypatch.undo()
    assert "SIGINT was held until the end of the training step" in caplog.text
    state = torch.load(ckpt, weights_only=True)["trainer"]
    assert 5 <= state["step"] < OPTIONS["max_steps"]
    assert state["stopped_because"] is None
    resumed = train(movie.raw, checkpoint=Checkpoint(ckpt, resume=True), **OPTIONS)
    _same_model(resumed, reference)
    assert not ckpt.exists() and not ckpt.with_name(ckpt.name + ".partial").exists()


def test_exception_inside_a_step_keeps_the_last_consistent_checkpoint(
    movie: SimulatedMovie,
    reference: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain KeyboardInterrupt in the middle of step 8 (no CLI handler to hold it).

    The trainer's state is then torn, so it is not saved; the checkpoint written after step
    7 stays, and resuming from it still reproduces the uninterrupted run.
    """
    ckpt = Checkpoint(tmp_path / "run.checkpoint.pt", every_s=0.0)  # after every step

    def interrupt() -> None:
        raise KeyboardInterrupt

    _inside_step(monkeypatch, 8, interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(movie.raw, checkpoint=ckpt, **OPTIONS)
    monkeypatch.undo()
    assert torch.load(ckpt.path, weights_only=True)["trainer"]["step"] == 7
    resumed = train(movie.raw, checkpoint=Checkpoint(ckpt.path, resume=True), **OPTIONS)
    _same_model(resumed, reference)


def test_finished_checkpoint_resumes_without_training(
    movie: SimulatedMovie, reference: TrainedModel, tmp_path: Path
) -> None:
    """Training done, interrupted later (e.g. during inference): resuming skips training."""
    path = tmp_path / "run.checkpoint.pt"
    first = train(movie.raw, checkpoint=Checkpoint(path, remove_when_done=False), **OPTIONS)
    assert path.is_file()
    assert torch.load(path, weights_only=True)["trainer"]["stopped_because"] == "max_steps"
    seen: list[int] = []
    again = train(
        movie.raw,
        checkpoint=Checkpoint(path, resume=True, remove_when_done=False),
        progress=lambda info: seen.append(info.step) if info.phase == "training" else None,
        **OPTIONS,
    )
    assert seen == [OPTIONS["max_steps"]]  # told where it stands, no step taken
    _same_model(first, reference)
    _same_model(again, reference)


def test_checkpoint_from_another_movie_or_settings_is_refused(
    movie: SimulatedMovie, tmp_path: Path
) -> None:
    """Resuming needs the same movie and training settings; the message says what differs."""
    path = tmp_path / "run.checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train(movie.raw, checkpoint=Checkpoint(path), progress=_stop_at(5), **OPTIONS)
    assert path.is_file()
    other = simulate("dense", photons=2.0, shape=(60, 32, 32), seed=1).raw
    with pytest.raises(InputError, match="another movie"):
        train(other, checkpoint=Checkpoint(path, resume=True), **OPTIONS)
    with pytest.raises(InputError, match=r"other training settings \(max_steps 20 there, 30"):
        train(movie.raw, checkpoint=Checkpoint(path, resume=True), **{**OPTIONS, "max_steps": 30})
    assert path.is_file()  # a refused checkpoint is left alone


def test_missing_stale_and_corrupt_checkpoints(movie: SimulatedMovie, tmp_path: Path) -> None:
    """--resume without a checkpoint, a stale one without --resume, and a damaged file."""
    path = tmp_path / "run.checkpoint.pt"
    options = {**OPTIONS, "max_steps": 5}
    stop = _stop_at(0, _Stop)  # after the checkpoint written when training ends
    with pytest.warns(UserWarning, match="no checkpoint to resume from"), pytest.raises(_Stop):
        train(movie.raw, checkpoint=Checkpoint(path, resume=True), progress=stop, **options)
    assert path.is_file()
    with pytest.warns(UserWarning, match="starting over"), pytest.raises(_Stop):
        train(movie.raw, checkpoint=Checkpoint(path), progress=stop, **options)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable calmdown checkpoint"):
        train(movie.raw, checkpoint=Checkpoint(path, resume=True), **options)


def test_defer_interrupts_holds_a_signal_to_the_end_of_the_block() -> None:
    """A signal inside the block is raised when it ends; a second one at once."""
    done = False
    before = signal.getsignal(signal.SIGINT)
    with handle_signals():
        with pytest.raises(Interrupted) as caught, defer_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            done = True
        assert done and caught.value.signal_name == "SIGTERM"
        with pytest.raises(Interrupted), defer_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("the second signal should have been raised at once")
    assert signal.getsignal(signal.SIGINT) is before
