"""Exceptions raised by calmdown.

Every error a user can cause by what they pass in is an :class:`InputError`, whose
message names the file (where there is one), the problem and the fix. The CLI prints
that message on one line and exits non-zero.
"""

from __future__ import annotations


class CalmdownError(Exception):
    """Base class of all calmdown errors."""


class InputError(CalmdownError, ValueError):
    """Bad input: a file, an array or an option that calmdown cannot use.

    Parameters
    ----------
    message : str
        What is wrong and what to do about it.
    path : str or None
        The file concerned, if any; it is prefixed to the message.
    """

    def __init__(self, message: str, *, path: object | None = None) -> None:
        self.path = None if path is None else str(path)
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(text)


class ModelFileError(InputError):
    """A model file that cannot be loaded (corrupt, or from an incompatible version)."""


class BlankFramesError(InputError):
    """Frames that measured nothing (one value, or no finite one, in every pixel).

    :func:`calmdown.prepare` reads such a movie without them (:mod:`calmdown.io.gaps`) unless
    asked to stop.
    """
