"""Ctrl-C and SIGTERM on a real ``calmdown`` process: nothing half-written, then --resume.

Each test starts the command in a subprocess on a small simulated movie, waits until it is
training (its checkpoint appears) or denoising (its progress bar appears), sends the signal and
checks the exit status, the one-line message and the files left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from calmdown.persist import load_model
from calmdown.simulate import simulate

TIMEOUT_S = 120.0  # generous: the machine may be shared; a normal run takes seconds
TRAIN_ARGS = ["--time-budget", "1000", "--threads", "1", "--device", "cpu"]


def _movie(folder: Path, shape: tuple[int, int, int]) -> Path:
    folder.mkdir()
    path = folder / "raw.npy"
    np.save(path, simulate("dense", photons=2.0, shape=shape, seed=0).raw)
    return path


def _calmdown(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "calmdown.cli", *args],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"calmdown exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {TIMEOUT_S} s")
        time.sleep(0.05)


def _interrupt(proc: subprocess.Popen[bytes], signum: int, log: Path) -> str:
    proc.send_signal(signum)
    try:
        proc.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("calmdown did not stop after the signal")
    lines = [ln for ln in log.read_text().replace("\r", "\n").splitlines() if ln.strip()]
    assert proc.returncode == 130, lines[-5:]
    return lines[-1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_during_training_then_resume(tmp_path: Path, signum: signal.Signals) -> None:
    """Interrupt while training: exit 130, one line, only the checkpoint left; --resume ends it.

    The checkpoint is written after every step here (``--checkpoint-every 0``), so its
    appearance says training has begun. SIGTERM must behave like Ctrl-C; the resumed run is
    checked after SIGINT only (it is the same code path), to keep the test short.
    """
    work = tmp_path / "run"
    _movie(work, (60, 32, 32))
    args = ["denoise", "raw.npy", "-o", "out.tif", "--max-steps", "20", *TRAIN_ARGS]
    args += ["--checkpoint-every", "0"]
    log = tmp_path / "stderr.txt"
    proc = _calmdown(args, work, log)
    ckpt = work / "out.checkpoint.pt"
    _wait_until(ckpt.is_file, proc, "checkpoint")
    last = _interrupt(proc, signum, log)
    assert last == (
        f"interrupted ({signum.name}); no output was left half-written (unfinished files are "
        "removed); rerun with --resume to continue training from the last checkpoint "
        "(out.checkpoint.pt)"
    )
    # No output, model or sidecar under its final name, and no partial file either.
    assert sorted(os.listdir(work)) == ["out.checkpoint.pt", "raw.npy"]
    state = torch.load(ckpt, weights_only=True)["trainer"]
    assert 1 <= state["step"] < 20 and state["stopped_because"] is None
    if signum != signal.SIGINT:
        return

    resumed = subprocess.run(
        [sys.executable, "-m", "calmdown.cli", *args, "--resume", "-v"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming training at step {state['step']}" in resumed.stderr
    assert "warning" not in resumed.stderr
    assert sorted(os.listdir(work)) == [
        "out.calmdown.json",
        "out.model.pt",
        "out.tif",
        "raw.npy",
    ]
    assert load_model(work / "out.model.pt").training["steps"] == 20


def test_interrupt_during_inference_leaves_nothing_under_the_output_name(tmp_path: Path) -> None:
    """Ctrl-C while the denoised movie is being written: its partial file is removed.

    The model, saved before inference, is complete (it loads); the checkpoint of the
    finished training stays, so --resume would go straight to inference.
    """
    work = tmp_path / "run"
    _movie(work, (120, 64, 64))
    args = ["denoise", "raw.npy", "-o", "out.tif", "--max-steps", "1", *TRAIN_ARGS]
    log = tmp_path / "stderr.txt"
    proc = _calmdown(args, work, log)
    _wait_until(lambda: "denoising" in log.read_text(), proc, "'denoising' on stderr")
    last = _interrupt(proc, signal.SIGINT, log)
    assert last.startswith("interrupted (SIGINT); no output was left half-written")
    assert last.endswith(
        "rerun with --resume to continue training from the last checkpoint (out.checkpoint.pt)"
    )
    assert sorted(os.listdir(work)) == ["out.checkpoint.pt", "out.model.pt", "raw.npy"]
    assert load_model(work / "out.model.pt").training["steps"] == 1
