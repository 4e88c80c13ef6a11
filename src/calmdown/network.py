"""The context network: the prior of the clean value from everything but the pixel's own frame.

``ContextNet`` sees frames ``t-K..t-1`` and ``t+1..t+K`` (never frame ``t``: the network is
J-invariant, so it cannot learn the noise of the value it predicts) and, as an extra channel, the
time-averaged image. Frames enter as deviations from the mean image, so the network's job is
explicit: say how this frame departs from the static morphology. It outputs a location (added
to the mean image) and a spread, both in photon units.

Two-dimensional convolutions with frames as channels, in a small three-level U-Net: cheap
enough for a laptop CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ContextNet"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
    )


class ContextNet(nn.Module):
    """J-invariant context network.

    Parameters
    ----------
    context_frames : int
        K, frames on each side of the predicted one.
    width : int
        Channels at the finest level (half resolution); 1.5x and 2x at the coarser levels.
    use_mean_image : bool
        Whether the time-averaged image is an input channel.
    neighbour_channels : int
        Extra input channels after the context frames: the neighbouring planes of a volume at
        frame t, as deviations from their own mean images (see :mod:`calmdown.neighbours`).

    Notes
    -----
    Inputs (photon units, all divided by the movie's brightness scale ``s0``):
    ``mean`` (B, 1, H, W) and ``frames`` (B, 2K + N, H, W), the neighbouring frames followed
    by the N neighbour-plane channels; with the mean-image channel the network sees the frames
    as deviations from the mean image.
    Outputs ``loc`` and ``scale`` (B, 1, H, W) in the same scaled units:
    ``loc = mean + f(.)`` (or the context average + f without the mean image) and
    ``scale = softplus(g(.))``. H and W must be multiples of 8.

    The input is folded into half resolution (2 x 2 pixels become channels, as in FFDNet)
    and unfolded at the end, so every convolution runs on a quarter of the pixels: three
    levels (1/2, 1/4, 1/8) of a U-Net, about 17 k multiply-adds per pixel at ``width=32``.
    """

    multiple = 8

    def __init__(
        self,
        context_frames: int = 3,
        width: int = 32,
        use_mean_image: bool = True,
        neighbour_channels: int = 0,
    ):
        super().__init__()
        self.context_frames = context_frames
        self.width = width
        self.use_mean_image = use_mean_image
        self.neighbour_channels = neighbour_channels
        c_in = 4 * (2 * context_frames + (1 if use_mean_image else 0) + 1 + neighbour_channels)
        w1, w2, w3 = width, (3 * width) // 2, 2 * width
        self.enc1 = _block(c_in, w1)
        self.enc2 = _block(w1, w2)
        self.mid = _block(w2, w3)
        self.dec2 = nn.Sequential(
            nn.Conv2d(w3 + w2, w2, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
        )
        self.dec1 = nn.Sequential(
            nn.Conv2d(w2 + w1, w1, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
        )
        self.head = nn.Conv2d(w1, 2 * 4, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.bias[4:] = -2.0

    def forward(
        self, mean: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict location and spread of the clean value.

        Parameters
        ----------
        mean : Tensor
            (B, 1, H, W) time-averaged image (scaled photon units); ignored without the
            mean-image channel.
        frames : Tensor
            (B, 2K + N, H, W) the neighbouring frames (scaled photon units), frame t
            excluded, then the N neighbour-plane channels.

        Returns
        -------
        loc, scale : Tensor
            (B, 1, H, W) each.
        """
        n_ctx = 2 * self.context_frames
        if frames.shape[1] != n_ctx + self.neighbour_channels:
            raise ValueError(
                f"expected {n_ctx} context frames and {self.neighbour_channels} neighbour-plane "
                f"channels, got {frames.shape[1]} channels"
            )
        planes = frames[:, n_ctx:]
        frames = frames[:, :n_ctx]
        local = frames.mean(dim=1, keepdim=True)
        if self.use_mean_image:
            # Deviations from the static image, plus the image itself.
            x = torch.cat([mean, frames - mean, local - mean, planes], dim=1)
            base = mean
        else:
            x = torch.cat([frames, local, planes], dim=1)
            base = local
        x = F.pixel_unshuffle(x, 2)
        e1 = self.enc1(x)
        e2 = self.enc2(F.avg_pool2d(e1, 2))
        m = self.mid(F.avg_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        out = F.pixel_shuffle(self.head(d1), 2)
        loc = base + out[:, :1]
        scale = F.softplus(out[:, 1:2]) + 1e-4
        return loc, scale
