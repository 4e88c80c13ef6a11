"""Neighbouring planes of a volume recording as context for the network.

In a volume scan, the planes above and below the one denoised are recorded in the same volume,
within milliseconds of it: a cell or dendrite that spans both shows its transient there at the
same time. Their frames at time ``t`` hold none of the denoised plane's noise at ``t`` (another
plane, another detector sample), so giving them to the network keeps it J-invariant, and
unlike the frames ``t +- k`` of the plane itself they say what happens at ``t``.

Each neighbour enters as its deviation from its own running mean image (photon units, through
its own noise model), like the plane's context frames: the network sees what changed in the
neighbour, not its different morphology. A plane at the top or bottom of the volume has one
neighbour, given twice, so every plane's network has the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from calmdown.context import MeanImage, compute_mean_image
from calmdown.errors import InputError
from calmdown.io import MovieReader
from calmdown.noise import NoiseModel

__all__ = ["NEIGHBOUR_CHANNELS", "NeighbourPlanes", "neighbour_numbers"]

NEIGHBOUR_CHANNELS = 2
"""Input channels a network with plane context gets: the plane above and the plane below."""


def neighbour_numbers(plane: int, n_planes: int) -> tuple[int, int]:
    """Return the planes (numbered from 1) that serve as context of ``plane``.

    The planes above and below; at the top or bottom of the volume, the one neighbour twice.

    Parameters
    ----------
    plane : int
        The plane denoised, from 1.
    n_planes : int
        Planes in the volume; at least 2.

    Returns
    -------
    tuple of int

    Raises
    ------
    InputError
        With fewer than two planes, or a plane out of range.

    Examples
    --------
    >>> neighbour_numbers(1, 3), neighbour_numbers(2, 3), neighbour_numbers(3, 3)
    ((2, 2), (1, 3), (2, 2))
    """
    if n_planes < 2:
        raise InputError(
            "neighbouring planes as context need a volume recording of at least two planes; "
            "this one has "
            f"{n_planes}: leave out --plane-context"
        )
    if not 1 <= plane <= n_planes:
        raise InputError(f"plane {plane} is out of range 1..{n_planes}")
    above = plane - 1 if plane > 1 else plane + 1
    below = plane + 1 if plane < n_planes else plane - 1
    return above, below


@dataclass
class NeighbourPlanes:
    """The neighbouring planes of the plane denoised: readers, noise models, mean images.

    Attributes
    ----------
    readers : list of MovieReader
        One per context channel, the same length and frame size as the plane denoised.
    noises : list of NoiseModel
        Each plane's own noise model.
    mean_images : list of MeanImage
        Each plane's running mean image (photon units).
    owned : list of MovieReader
        The readers that :meth:`close` closes (those opened for this object).
    """

    readers: list[MovieReader]
    noises: list[NoiseModel]
    mean_images: list[MeanImage]
    owned: list[MovieReader] = field(default_factory=list)

    @classmethod
    def prepare(
        cls,
        readers: Sequence[MovieReader],
        shape: tuple[int, int, int],
        *,
        estimate: Callable[[MovieReader], NoiseModel],
        window: int,
    ) -> NeighbourPlanes:
        """Check the readers against the plane denoised; estimate each one's noise and mean.

        Parameters
        ----------
        readers : sequence of MovieReader
            :data:`NEIGHBOUR_CHANNELS` of them.
        shape : tuple of int
            ``(T, Y, X)`` of the plane denoised.
        estimate : callable
            ``estimate(reader) -> NoiseModel``.
        window : int
            Frames per block of the running mean images.
        """
        readers = list(readers)
        if len(readers) != NEIGHBOUR_CHANNELS:
            raise ValueError(
                f"plane context takes {NEIGHBOUR_CHANNELS} neighbouring planes, got "
                f"{len(readers)} (at the edge of a volume, give the one neighbour twice)"
            )
        for reader in readers:
            if tuple(reader.shape) != tuple(shape):
                raise InputError(
                    f"a neighbouring plane has shape {tuple(reader.shape)}, the plane denoised "
                    f"{tuple(shape)}; planes of one volume recording must match",
                    path=reader.path,
                )
        noises: list[NoiseModel] = []
        means: list[MeanImage] = []
        for i, reader in enumerate(readers):
            if i and readers[i] is readers[0]:  # the one neighbour of an edge plane, twice
                noises.append(noises[0])
                means.append(means[0])
                continue
            noise = estimate(reader)
            noises.append(noise)
            means.append(
                compute_mean_image(
                    reader.read, reader.shape[0], window=window, to_photons=noise.to_photons
                )
            )
        return cls(readers=readers, noises=noises, mean_images=means)

    @property
    def channels(self) -> int:
        """Input channels: one per neighbour."""
        return len(self.readers)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` of every neighbour in photons: ``(stop - start, N, Y, X)``."""
        blocks = []
        cache: dict[int, np.ndarray] = {}
        for reader, noise in zip(self.readers, self.noises, strict=True):
            key = id(reader)
            if key not in cache:
                cache[key] = noise.to_photons(reader.read(start, stop)).astype(np.float32)
            blocks.append(cache[key])
        return np.stack(blocks, axis=1)

    def mean_images_at(
        self, t: np.ndarray, region: tuple[slice, slice] = (slice(None), slice(None))
    ) -> np.ndarray:
        """Each neighbour's mean image at absolute frames ``t``: ``(len(t), N, Y, X)``.

        ``region``: the rows and columns wanted (default: the whole frame).
        """
        return np.stack([m.images(t, region=region) for m in self.mean_images], axis=1)

    def crop_means(self, t: int, ys: slice, xs: slice) -> np.ndarray:
        """Each neighbour's mean image at absolute frame ``t``, cropped: ``(N, y, x)``."""
        return np.stack([m.images(np.array([t]), region=(ys, xs))[0] for m in self.mean_images])

    def noise_sd(self, level: torch.Tensor) -> torch.Tensor:
        """Noise sd of each neighbour's frame at its mean-image ``level`` ``(B, N, Y, X)``."""
        ratio = torch.tensor(
            [n.variance_ratio for n in self.noises], dtype=level.dtype, device=level.device
        ).view(1, -1, 1, 1)
        read2 = torch.tensor(
            [n.read_noise_photons**2 for n in self.noises], dtype=level.dtype, device=level.device
        ).view(1, -1, 1, 1)
        return torch.sqrt(ratio * (torch.clamp(level, min=0.0) + read2))

    def close(self) -> None:
        """Close the readers opened for this object."""
        for reader in self.owned:
            reader.close()
