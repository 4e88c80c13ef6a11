"""Training checkpoints, and interrupts (SIGINT, SIGTERM) that never tear one.

A checkpoint is one file holding everything needed to continue a training run where it
stopped: the network and optimiser state, the step count, the random generators, the
early-stopping state (best held-out loss and weights, evaluations without improvement, the
history) and the training time spent, so that the remaining step count *and* the remaining time
budget carry on rather than restart. It also records the hash of the movie it was trained on and
the settings that shape training, so that a checkpoint from another movie or other settings is
refused with a message that says so.

The file is written atomically (``<path>.partial``, then :func:`os.replace`): it is either the
previous complete checkpoint or the new complete one, never half of one.

Interrupts: :func:`handle_signals` (installed by the CLI) turns SIGINT and SIGTERM into
:class:`Interrupted`, a :class:`KeyboardInterrupt`. Inside :func:`defer_interrupts` blocks,
which the trainer wraps around each optimisation step, the signal is held until the block ends,
so the trainer always stops at a step boundary and the checkpoint written at interruption is
consistent. A second signal while one is held stops at once.

Reproducibility: with the same seed, input, settings and machine (same PyTorch, same number of
threads), training and its resumption are bitwise deterministic *as long as the run stops on
``max_steps`` or early stopping*. The time budget makes the step count (and the learning-rate
schedule, which follows the larger of the step and time fractions) depend on the machine's
load: runs that stop on the budget are not reproducible.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from calmdown import __version__
from calmdown.config import Config
from calmdown.errors import InputError

if TYPE_CHECKING:
    from calmdown.train import Trainer, TrainingResult, TrainProgress

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "Interrupted",
    "defer_interrupts",
    "handle_signals",
    "run_training",
]

logger = logging.getLogger(__name__)

FORMAT = "calmdown-checkpoint"
FORMAT_VERSION = 1

#: Sections of :class:`~calmdown.config.Config` that shape training; a checkpoint made with
#: other values in them is refused. Inference settings, the device and threads may change.
TRAINING_SECTIONS = ("noise", "model", "train")


# -- interrupts ------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised by the handler that :func:`handle_signals` installs.

    A subclass of :class:`KeyboardInterrupt`, so every ``finally`` and ``except
    KeyboardInterrupt`` treats SIGTERM like Ctrl-C.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        """Name of the signal, e.g. ``"SIGTERM"``."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


class _Deferral:
    """Depth of nested :func:`defer_interrupts` blocks in the main thread; a held signal."""

    depth: int = 0
    pending: int | None = None


_DEFERRAL = _Deferral()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Raise :class:`Interrupted`, or hold the signal inside a :func:`defer_interrupts` block."""
    if _DEFERRAL.depth > 0 and _DEFERRAL.pending is None:
        _DEFERRAL.pending = signum  # no logging here: a signal handler must stay minimal
        return
    _DEFERRAL.pending = None
    raise Interrupted(signum)


@contextlib.contextmanager
def defer_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise :class:`Interrupted`.

    Only signals handled by :func:`handle_signals` are held (a plain Ctrl-C under Python's
    default handler still interrupts at once), and only in the main thread, where Python runs
    signal handlers; elsewhere this does nothing. A second signal while one is held is raised
    at once. Blocks nest.

    Yields
    ------
    None
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _DEFERRAL.depth += 1
    try:
        yield
    except BaseException:
        _DEFERRAL.depth -= 1
        if _DEFERRAL.depth == 0:
            _DEFERRAL.pending = None  # the exception in flight ends the block anyway
        raise
    _DEFERRAL.depth -= 1
    if _DEFERRAL.depth == 0 and _DEFERRAL.pending is not None:
        signum, _DEFERRAL.pending = _DEFERRAL.pending, None
        err = Interrupted(signum)
        logger.debug("%s was held until the end of the training step", err.signal_name)
        raise err


@contextlib.contextmanager
def handle_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` for the duration of the block.

    The previous handlers are restored afterwards. Outside the main thread (where Python
    cannot install handlers) this does nothing.

    Parameters
    ----------
    signals : tuple of signal.Signals
        The signals to handle.

    Yields
    ------
    None

    Examples
    --------
    >>> import os, signal
    >>> with handle_signals():
    ...     try:
    ...         os.kill(os.getpid(), signal.SIGTERM)
    ...     except Interrupted as err:
    ...         print(err.signal_name)
    SIGTERM
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _DEFERRAL.pending = None


# -- the file --------------------------------------------------------------------------------


def _settings(config: Config) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    return {section: data[section] for section in TRAINING_SECTIONS}


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for section in TRAINING_SECTIONS:
        a, b = saved.get(section, {}), now.get(section, {})
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                out.append(f"{name} {a.get(name)!r} there, {b.get(name)!r} now")
    return out


@dataclass
class Checkpoint:
    """Where and how training checkpoints are kept.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file, conventionally ``*.checkpoint.pt``.
    resume : bool
        Continue from the file if it exists (else train from the start, with a warning).
        False starts over, replacing an existing checkpoint (with a warning).
    every_s : float
        Seconds of training between checkpoints; one is also written when training ends and
        when it is interrupted.
    remove_when_done : bool
        Delete the file when :func:`calmdown.train` returns. The CLI passes False and deletes
        it only after the outputs are written, so that an interrupt during inference can
        still resume without training again.

    Examples
    --------
    >>> import tempfile, os
    >>> ckpt = Checkpoint(os.path.join(tempfile.mkdtemp(), "run.checkpoint.pt"), resume=True)
    >>> ckpt.exists()
    False
    """

    path: Path
    resume: bool = False
    every_s: float = 30.0
    remove_when_done: bool = True

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser()
        if not self.every_s >= 0:
            raise InputError(f"checkpoint interval must be >= 0 seconds, got {self.every_s}")

    @classmethod
    def coerce(cls, value: Checkpoint | str | os.PathLike[str] | None) -> Checkpoint | None:
        """Return ``value`` as a :class:`Checkpoint` (a path means ``Checkpoint(path)``)."""
        if value is None or isinstance(value, Checkpoint):
            return value
        return cls(Path(value))

    @property
    def partial(self) -> Path:
        """The file being written before it is renamed to :attr:`path`."""
        return self.path.with_name(self.path.name + ".partial")

    def exists(self) -> bool:
        """Whether a checkpoint file is there."""
        return self.path.is_file()

    def remove(self) -> None:
        """Delete the checkpoint (and any partial file); no error if there is none."""
        self.partial.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)

    def save(self, state: dict[str, Any], *, config: Config, data_hash: str) -> Path:
        """Write ``state`` (from :meth:`Trainer.state_dict`) atomically.

        Parameters
        ----------
        state : dict
            The trainer's state.
        config : Config
            Settings of the run; their training sections are recorded.
        data_hash : str
            Hash of the training movie (see :func:`calmdown.pipeline.train`).

        Returns
        -------
        Path
            The checkpoint file.

        Raises
        ------
        InputError
            If the file cannot be written.
        """
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "calmdown_version": __version__,
            "data_hash": str(data_hash),
            "settings": _settings(config),
            "trainer": state,
        }
        try:
            torch.save(payload, self.partial)
            os.replace(self.partial, self.path)
        except OSError as err:
            self.partial.unlink(missing_ok=True)
            raise InputError(
                f"cannot write the training checkpoint: {err}; choose a writable location",
                path=self.path,
            ) from err
        except BaseException:
            self.partial.unlink(missing_ok=True)
            raise
        logger.info("checkpoint at step %s written to %s", state.get("step"), self.path)
        return self.path

    def load(self, *, config: Config, data_hash: str) -> dict[str, Any] | None:
        """Read the trainer state to resume from; None means train from the start.

        Parameters
        ----------
        config : Config
            Settings of this run; the training sections must equal the checkpoint's.
        data_hash : str
            Hash of this run's training movie; must equal the checkpoint's.

        Returns
        -------
        dict or None
            For :meth:`Trainer.load_state_dict`; None when not resuming or there is no file.

        Raises
        ------
        InputError
            If the file is not a readable checkpoint, or was made from another movie or with
            other settings; the message says what to do.
        """
        if not self.resume:
            if self.exists():
                warnings.warn(
                    f"{self.path}: a checkpoint of an earlier run is there; starting over and "
                    "replacing it (pass --resume, or resume=True, to continue from it)",
                    stacklevel=3,
                )
            return None
        if not self.exists():
            warnings.warn(
                f"{self.path}: no checkpoint to resume from; training from the start",
                stacklevel=3,
            )
            return None
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except (
            RuntimeError,
            OSError,
            EOFError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
            IndexError,
            ValueError,
            KeyError,
            TypeError,
            UnicodeDecodeError,
        ) as err:
            raise InputError(
                "not a readable calmdown checkpoint (corrupt or another kind of file); delete "
                "it or rerun without --resume to start over",
                path=self.path,
            ) from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(
                "not a calmdown checkpoint; delete it or rerun without --resume to start over",
                path=self.path,
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"checkpoint format {data.get('format_version')} (calmdown "
                f"{data.get('calmdown_version')}) cannot be resumed by calmdown {__version__}; "
                "rerun without --resume to start over",
                path=self.path,
            )
        if data.get("data_hash") != data_hash:
            raise InputError(
                "the checkpoint was made while training on another movie (or this one read "
                "with another channel, plane or noise setting); pass the movie and options it "
                "was made with, or rerun without --resume to start over",
                path=self.path,
            )
        diff = _differences(dict(data.get("settings") or {}), _settings(config))
        if diff:
            raise InputError(
                "the checkpoint was made with other training settings ("
                + "; ".join(diff[:4])
                + ("; ..." if len(diff) > 4 else "")
                + "); rerun with the options it was made with, or without --resume to start "
                "over",
                path=self.path,
            )
        state = data.get("trainer")
        if not isinstance(state, dict):
            raise InputError(
                "the checkpoint holds no training state; rerun without --resume to start over",
                path=self.path,
            )
        return state


# -- training with checkpoints ------------------------------------------------------------------


def run_training(
    trainer: Trainer,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    checkpoint: Checkpoint | None = None,
    config: Config,
    data_hash: str,
) -> TrainingResult:
    """Run ``trainer`` to the end, resuming from and writing ``checkpoint``.

    Parameters
    ----------
    trainer : Trainer
        A freshly built trainer.
    progress : callable, optional
        Called after each held-out evaluation (and once on resuming, with the last one).
    checkpoint : Checkpoint, optional
        Resume from it (when ``checkpoint.resume``); write it every ``checkpoint.every_s``
        seconds, when training ends and when it is interrupted.
    config : Config
        Settings of the run (recorded in the checkpoint).
    data_hash : str
        Hash of the training movie (recorded in the checkpoint).

    Returns
    -------
    TrainingResult
        ``trainer.result``.

    Raises
    ------
    KeyboardInterrupt
        On an interrupt, after writing the checkpoint (when the trainer stopped between
        steps, which :func:`defer_interrupts` ensures under :func:`handle_signals`;
        otherwise the last checkpoint written stays).
    """
    save: Callable[[dict[str, Any]], object] | None = None
    if checkpoint is not None:
        state = checkpoint.load(config=config, data_hash=data_hash)
        if state is not None:
            try:
                trainer.load_state_dict(state)
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                raise InputError(
                    f"the checkpoint does not fit this network ({str(err).splitlines()[0]}); "
                    "rerun without --resume to start over",
                    path=checkpoint.path,
                ) from err
            logger.info(
                "resuming training at step %d after %.1f s from %s",
                trainer.step,
                trainer.seconds,
                checkpoint.path,
            )
            if progress is not None and trainer.history:
                progress(trainer.history[-1])

        def save(state: dict[str, Any]) -> None:
            assert checkpoint is not None
            try:
                checkpoint.save(state, config=config, data_hash=data_hash)
            except InputError as err:  # a lost checkpoint must not stop the training itself
                warnings.warn(f"{err}; training goes on without it", stacklevel=2)

    try:
        every = checkpoint.every_s if checkpoint is not None else 0.0
        for info in trainer.steps(checkpoint=save, checkpoint_every_s=every):
            if progress is not None:
                progress(info)
    except KeyboardInterrupt:
        if checkpoint is not None:
            _save_interrupted(trainer, checkpoint, save)
        raise
    return trainer.result


def _save_interrupted(
    trainer: Trainer, checkpoint: Checkpoint, save: Callable[[dict[str, Any]], object] | None
) -> None:
    """Write the checkpoint of an interrupted run, if the trainer stopped between steps."""
    try:
        state = trainer.state_dict()
    except RuntimeError as err:
        logger.warning("%s; %s keeps the last checkpoint written", err, checkpoint.path)
        return
    if save is None or not trainer.started:
        return
    with defer_interrupts():
        save(state)
