"""The noise model on the real recordings beside the checkout (skipped where a clone has none)."""

import warnings

import calmdown


def _noise(path, key=None):
    with calmdown.open_movie(path, key=key) as reader, warnings.catch_warnings():
        # A real recording's activity scatters the photon-transfer bins; the warning is
        # about precision, which these bounds check directly.
        warnings.simplefilter("ignore", UserWarning)
        return calmdown.estimate_noise(reader.read, reader.shape[0], name=str(path))


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
