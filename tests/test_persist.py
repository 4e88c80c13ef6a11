import numpy as np
import pytest
import torch

import calmdown
from calmdown.errors import ModelFileError
from calmdown.persist import load_model, save_model


def test_round_trip_gives_the_same_output(tmp_path, small_sim, small_model):
    path = save_model(small_model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt.partial").exists()
    loaded = load_model(path)
    assert loaded.noise == small_model.noise
    a = calmdown.apply(small_model, small_sim.raw[:30])
    b = calmdown.apply(loaded, small_sim.raw[:30])
    np.testing.assert_array_equal(a, b)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelFileError, match=r"bad\.pt"):
        load_model(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "none.pt")


def test_other_format_version(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["format_version"] = 999
    torch.save(data, path)
    with pytest.raises(ModelFileError, match="retrain"):
        load_model(path)


def test_weights_that_do_not_fit_the_network(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["state_dict"] = {k: v for k, v in data["state_dict"].items() if "head" not in k}
    torch.save(data, path)
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(path)
