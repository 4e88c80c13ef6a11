"""The noise model on the real recordings beside the checkout (skipped where a clone has none)."""

import warnings

import calmdown


def _noise(path, key=None, frames=None):
    with calmdown.open_movie(path, key=key) as reader, warnings.catch_warnings():
        # A real recording's activity scatters the photon-transfer bins; the warning is
        # about precision, which these bounds check directly.
        warnings.simplefilter("ignore", UserWarning)
        a, b = frames or (0, reader.shape[0])
        return calmdown.estimate_noise(
            lambda s, e: reader.read(a + s, a + e), b - a, name=str(path)
        )


def test_allen_registration_correlation_is_measured(shared_data):
    model = _noise(shared_data / "allen-registered-100x100x100.h5", key="data")
    # The README of the recordings: about 0.36 along x and 0.27 along y.
    assert 0.25 < model.neighbour_correlation[1] < 0.5
    assert 0.15 < model.neighbour_correlation[0] < 0.4
    assert model.variance_ratio < 0.6
    assert 0.02 < model.photons_per_pixel < 1.0


def test_optinist_noise_model(shared_data):
    model = _noise(shared_data / "optinist-mouse2p-top-2000x64x128.tif")
    assert 0.1 < model.neighbour_correlation[1] < 0.35
    assert model.gain > 0 and model.read_noise > 0
    assert 0.2 < model.photons_per_pixel < 5


def test_optinist_halves_give_the_same_gain(shared_data):
    """Each half alone gives the whole recording's gain.

    The second half's fit once failed: its bright bins pulled the photon-transfer line below
    zero at the dim end.
    """
    path = shared_data / "optinist-mouse2p-top-2000x64x128.tif"
    whole = _noise(path).gain
    for frames in ((0, 1000), (1000, 2000)):
        assert abs(_noise(path, frames=frames).gain / whole - 1) < 0.1
