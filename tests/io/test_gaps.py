"""Blank frames between measured ones: found in one pass, read around, mapped back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from calmdown.errors import InputError
from calmdown.io import open_movie
from calmdown.io.gaps import BlankFrames, SkipFramesReader, find_blank_frames

BLANK = [0, 40, 41, 42, 75, 99]


def gapped(n: int = 100, size: int = 16) -> np.ndarray:
    """Return a noisy float movie whose frames ``BLANK`` hold one value each (75: no finite one)."""
    movie = np.random.default_rng(0).poisson(4.0, (n, size, size)).astype(np.float32) * 10 + 100
    movie[[0, 40, 41, 42]] = 0.0
    movie[75] = np.nan
    movie[99] = 7.0
    return movie


def test_every_blank_frame_is_found_with_its_value() -> None:
    found = find_blank_frames(open_movie(gapped()), chunk_pixels=16 * 16 * 7)  # 7 per block
    assert found.n_frames == 100
    assert found.blank.tolist() == BLANK
    np.testing.assert_array_equal(found.values, [0, 0, 0, 0, np.nan, 7])
    assert found.describe() == "0, 40-42, 75, 99"
    assert found.kept.tolist() == [t for t in range(100) if t not in BLANK]


def test_the_reader_without_them_reads_the_measured_frames_in_order() -> None:
    movie = gapped()
    reader = SkipFramesReader(open_movie(movie), find_blank_frames(open_movie(movie)))
    measured = np.delete(movie, BLANK, axis=0)
    assert reader.shape == (94, 16, 16)
    for start, stop in ((0, 94), (30, 45), (38, 39), (70, 94), (93, 94)):
        np.testing.assert_array_equal(reader.read(start, stop), measured[start:stop])
    assert np.isfinite(reader.read(0, 94)).all()  # the NaN frame is never read


def test_spans_of_consecutive_chunks_cover_the_movie_once() -> None:
    blank = BlankFrames(100, np.array(BLANK), np.zeros(len(BLANK)))
    n_kept = len(blank.kept)
    for size in (1, 7, 40, n_kept):
        edges = [*range(0, n_kept, size), n_kept]
        spans = [blank.span(a, b) for a, b in itertools.pairwise(edges)]
        assert spans[0][0] == 0 and spans[-1][1] == 100
        assert all(s[1] == t[0] for s, t in itertools.pairwise(spans))
    assert blank.span(0, 1) == (0, 2)  # the first measured frame brings frame 0 along
    assert blank.span(38, 39) == (39, 40)  # frame 39 alone
    assert blank.span(39, 40) == (40, 44)  # frame 43 brings the run 40-42 before it
    assert blank.span(39, 39) == (40, 43)  # an empty range: the blank run before frame 43
    assert blank.to_kept(40, 43) == (39, 39)
    assert blank.to_kept(10, 80) == (9, 75)  # frames 10-79 but 40-42 and 75


def test_a_mostly_blank_movie_is_refused() -> None:
    movie = gapped()
    movie[1:60] = 0.0
    with pytest.raises(InputError, match="more than half of this movie measured nothing"):
        find_blank_frames(open_movie(movie))


def test_a_frame_of_nan_mid_movie_is_a_blank_frame_not_an_error() -> None:
    import calmdown
    from calmdown.errors import BlankFramesError
    from calmdown.simulate import simulate

    movie = simulate("dense", photons=2.0, shape=(120, 32, 32), seed=0).raw.astype(np.float32)
    movie[60] = np.nan  # a dropped frame, filled with NaN
    with pytest.raises(BlankFramesError, match=r"frame 60 of frames 0:120 holds no finite value"):
        open_movie(movie).read(0, 120)
    prep = calmdown.prepare(movie, calmdown.make_config())
    assert prep.blank is not None and prep.blank.blank.tolist() == [60]
    model = calmdown.train(movie, max_steps=5, prepared=prep)
    den = np.concatenate([c.denoised for c in calmdown.iter_apply(model, movie, prepared=prep)])
    assert np.isnan(den[60]).all() and np.isfinite(np.delete(den, 60, axis=0)).all()
