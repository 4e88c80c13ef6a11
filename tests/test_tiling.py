import itertools

import numpy as np
import pytest
import torch

from calmdown.network import ContextNet
from calmdown.tiling import predict_tiled, tile_starts, time_chunks


@pytest.mark.parametrize(
    ("n", "chunk", "halo"), [(10, 4, 2), (100, 128, 5), (37, 1, 0), (50, 7, 9)]
)
def test_time_chunks_cover_every_frame_once(n, chunk, halo):
    chunks = time_chunks(n, chunk, halo)
    covered = np.concatenate([np.arange(c.out_start, c.out_stop) for c in chunks])
    assert covered.tolist() == list(range(n))
    for c in chunks:
        assert c.read_start == max(0, c.out_start - halo)
        assert c.read_stop == min(n, c.out_stop + halo)


@pytest.mark.parametrize(("size", "tile", "overlap"), [(100, 64, 16), (64, 64, 8), (513, 128, 32)])
def test_tiles_cover_with_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, size) == size
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_tiled_equals_untiled_for_a_local_function():
    def fn(mean, frames):
        return mean + frames.mean(1, keepdim=True), torch.ones_like(mean)

    rng = np.random.default_rng(0)
    mean = torch.from_numpy(rng.random((2, 1, 100, 90), dtype=np.float32))
    frames = torch.from_numpy(rng.random((2, 4, 100, 90), dtype=np.float32))
    loc, scale = predict_tiled(fn, mean, frames, tile=48, overlap=16)
    ref, _ = fn(mean, frames)
    torch.testing.assert_close(loc, ref)
    torch.testing.assert_close(scale, torch.ones_like(scale))


def test_no_seams_with_the_network():
    torch.manual_seed(0)
    net = ContextNet(2, 8).eval()
    for p in net.head.parameters():  # a non-trivial output
        torch.nn.init.normal_(p, std=0.1)
    rng = np.random.default_rng(1)
    mean = torch.from_numpy(rng.random((1, 1, 160, 160), dtype=np.float32))
    frames = torch.from_numpy(rng.random((1, 4, 160, 160), dtype=np.float32))
    with torch.no_grad():
        full, _ = net(mean, frames)
        tiled, _ = predict_tiled(net, mean, frames, tile=96, overlap=48)
    err = (tiled - full).abs()[0, 0]
    # Blending keeps the tiled result close to the untiled one everywhere, seams included.
    assert float(err.max()) < 0.05 * float(full.std())
