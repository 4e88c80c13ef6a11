import pytest

from calmdown.config import Config, make_config
from calmdown.errors import InputError


def test_flat_options_reach_their_section():
    cfg = make_config(context_frames=2, gain=3.0, time_budget_s=10, output="prior", enabled=False)
    assert cfg.model.context_frames == 2
    assert cfg.noise.gain == 3.0
    assert cfg.train.time_budget_s == 10
    assert cfg.inference.output == "prior"
    assert cfg.inference.guard.enabled is False


def test_none_keeps_defaults_and_base_is_not_modified():
    base = Config()
    cfg = make_config(base, context_frames=None, seed=5)
    assert cfg.model.context_frames == base.model.context_frames
    assert cfg.train.seed == 5 and base.train.seed == 0


def test_unknown_option_is_named():
    with pytest.raises(InputError, match="contxt_frames"):
        make_config(contxt_frames=3)


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("patch_size", 60, "multiple of 8"),
        ("window_frames", 14, "odd"),
        ("val_fraction", 0.9, "val_fraction"),
    ],
)
def test_invalid_values_say_why(name, value, hint):
    with pytest.raises(InputError, match=hint):
        make_config(**{name: value})


def test_none_sets_what_may_be_none_and_keeps_the_rest():
    cfg = make_config(time_budget_s=None, max_steps=None, gain=None)
    assert cfg.train.time_budget_s is None  # no time budget, as the field documents
    assert cfg.train.max_steps == Config().train.max_steps  # unset: the default
    assert cfg.noise.gain is None
    assert make_config(cfg, time_budget_s=60).train.time_budget_s == 60
