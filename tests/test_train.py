"""Training: its guards against one bad step, and the layout of what it saves."""

import math

import pytest
import torch

import calmdown
from calmdown.pipeline import make_trainer, prepare
from calmdown.train import CLIP_WINDOW, Trainer


def _trainer(small_sim, **options) -> Trainer:
    cfg = calmdown.make_config(seed=0, time_budget_s=None, val_every=25, patience=100, **options)
    return make_trainer(prepare(small_sim.raw, cfg), cfg, torch.device("cpu"))


def _bad_step(monkeypatch, step: int, factor: float) -> None:
    """Multiply the training loss of one step (not held-out evaluations) by ``factor``."""
    loss = Trainer._loss
    calls = {"n": 0}

    def patched(self: Trainer, *batch: torch.Tensor) -> torch.Tensor:
        out = loss(self, *batch)
        if not torch.is_grad_enabled():  # a held-out evaluation
            return out
        calls["n"] += 1
        return out * factor if calls["n"] == step else out

    monkeypatch.setattr(Trainer, "_loss", patched)


def test_a_diverged_run_goes_back_to_its_best_weights_and_carries_on(small_sim):
    trainer = _trainer(small_sim, max_steps=150)
    before = None
    for info in trainer.steps():
        if info.step == 50:
            before = info.best_val_loss
            with torch.no_grad():  # a step gone badly wrong: the weights blown up
                for p in trainer.net.parameters():
                    p.mul_(30.0)
    vals = [h.val_loss for h in trainer.history]
    assert before is not None and trainer.initial_val_loss is not None
    # The next evaluation sees it (worse than the untrained network) ...
    assert vals[2] > trainer.initial_val_loss
    assert trainer.recoveries == 1
    # ... and training continues from the best weights instead of from the wreck.
    assert all(v < trainer.initial_val_loss for v in vals[3:]), vals
    assert trainer.result.best_val_loss <= before
    assert trainer.result.recoveries == 1


def test_a_step_with_a_non_finite_loss_is_skipped(small_sim, monkeypatch):
    trainer = _trainer(small_sim, max_steps=60)
    _bad_step(monkeypatch, 30, math.nan)
    result = trainer.run()
    assert all(torch.isfinite(v).all() for v in result.state_dict.values())
    assert all(math.isfinite(h.val_loss) for h in trainer.history)
    assert result.best_val_loss < trainer.initial_val_loss
    assert trainer.recoveries == 0


def test_gradients_are_clipped_to_a_multiple_of_recent_norms(small_sim, monkeypatch):
    # A loss 1000x too large at one step. Adam alone bounds that step, but its momentum
    # carries the spike's direction on for ten steps or so; cut to CLIP_FACTOR x the recent
    # median norm, the spike moves the weights hardly more than an ordinary step would.
    def run(spike: float) -> tuple[float, float]:
        trainer = _trainer(small_sim, max_steps=100)
        monkeypatch.undo()
        _bad_step(monkeypatch, 35, spike)
        trainer.best_val_loss = trainer.initial_val_loss = trainer.validate()
        trainer._best_state = {k: v.clone() for k, v in trainer.net.state_dict().items()}
        weights = []
        for _ in range(60):
            weights.append([p.detach().clone() for p in trainer.net.parameters()])
            trainer._step(0.0)
        assert len(trainer._grad_norms) >= CLIP_WINDOW // 5
        move = sum(
            float(((a - b) ** 2).sum()) for a, b in zip(weights[44], weights[34], strict=True)
        )
        return move**0.5, trainer.validate()

    calm_move, calm_val = run(1.0)
    spike_move, spike_val = run(1000.0)
    assert spike_move < 1.5 * calm_move, (spike_move, calm_move)
    assert abs(spike_val - calm_val) < 1e-3, (spike_val, calm_val)


def test_a_model_trained_in_channels_last_keeps_plain_weights_and_predicts_the_same(small_model):
    # Training runs channels-last on the CPU; the model file must not depend on it.
    assert all(v.is_contiguous() for v in small_model.state_dict.values())
    net = small_model.network(torch.device("cpu")).eval()
    k = small_model.config.model.context_frames
    gen = torch.Generator().manual_seed(0)
    mean, frames = (
        torch.rand(2, 1, 32, 32, generator=gen),
        torch.rand(2, 2 * k, 32, 32, generator=gen),
    )
    with torch.no_grad():
        plain = net(mean, frames)
        net.to(memory_format=torch.channels_last)
        last = net(
            mean.contiguous(memory_format=torch.channels_last),
            frames.contiguous(memory_format=torch.channels_last),
        )
    for a, b in zip(plain, last, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fine_tuning_starts_from_the_given_network_and_gets_further(small_model):
    # Another movie of the same kind of preparation (another seed): a second session.
    other = calmdown.simulate("dense", photons=1.5, shape=(300, 64, 64), seed=11)
    cfg = calmdown.make_config(seed=0, time_budget_s=None, max_steps=50, val_every=25)
    prep = prepare(other.raw, cfg)
    scratch = make_trainer(prep, cfg, torch.device("cpu"))
    tuned = make_trainer(prep, cfg, torch.device("cpu"), init=small_model)
    start_scratch, start_tuned = scratch.validate(), tuned.validate()
    end_scratch, end_tuned = scratch.run().best_val_loss, tuned.run().best_val_loss
    # The given network already predicts this movie better than random weights do after more
    # than half of 50 steps (the loss is a likelihood dominated by the noise: read gains on
    # what training from scratch gains) ...
    assert start_tuned < start_scratch - 0.5 * (start_scratch - end_scratch)
    # ... and 50 steps from it end below 50 steps from scratch.
    assert end_tuned < end_scratch, (end_tuned, end_scratch)


def test_bfloat16_steps_train_float32_weights_judged_in_float32(small_sim, monkeypatch):
    # Forced on (emulated where the CPU lacks it: slow, so a few small steps).
    from calmdown import device as device_module

    monkeypatch.setattr(device_module, "native_bfloat16", lambda device: True)
    small = {"batch_size": 4, "patch_size": 32, "max_steps": 6}
    half = _trainer(small_sim, precision="bfloat16", **small)
    full = _trainer(small_sim, precision="float32", **small)
    full.net.load_state_dict(half.net.state_dict())
    batch = half._batch(half._random_picks(4))
    half.net.train()
    full.net.train()
    with torch.no_grad():
        step_half, step_full = float(half._loss(*batch)), float(full._loss(*batch))
    # The steps run in bfloat16 (8 significant bits), close to but not the float32 loss ...
    assert step_half != step_full
    assert abs(step_half - step_full) < 1e-2 * abs(step_full)
    # ... and the held-out evaluations, which pick the weights kept, in float32.
    assert half.validate() == full.validate()
    start = half.validate()
    result = half.run()
    assert all(v.dtype == torch.float32 for v in result.state_dict.values())
    assert result.best_val_loss < start


def test_early_stopping_waits_for_the_last_part_of_the_run(small_sim, monkeypatch):
    # A held-out loss that never improves: patience (3 evaluations, every 10 steps) counts
    # from step 160 of 200 on, where the learning rate has decayed, not from the start.
    monkeypatch.setattr(Trainer, "validate", lambda self: 1.0)
    trainer = _trainer(small_sim, batch_size=2, patch_size=32, max_steps=200)
    trainer.tcfg = trainer.tcfg.model_copy(update={"val_every": 10, "patience": 3})
    trainer.run()
    assert trainer.stopped_because == "early_stopping"
    assert trainer.step == 180, trainer.step  # evaluations at 160, 170 and 180 (30 before)


def test_a_clipped_target_counts_by_the_probability_of_reaching_the_ceiling():
    from calmdown.loss import marginal_nll

    kw = {"scale0": 1.0, "read_noise2": 0.0, "ratio": 1.0}
    scale = torch.full((3,), 0.5)
    loc = torch.tensor([2.0, 4.0, 6.0])
    at_ceiling = torch.full((3,), 4.0)  # all three clipped at 4
    got = marginal_nll(at_ceiling, loc, scale, ceiling=4.0, **kw)
    sd = torch.sqrt(0.25 + loc)  # prior variance plus the noise's at the location
    want = -torch.special.log_ndtr((loc - 4.0) / sd).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    # A prior above the ceiling explains a clipped value; one below it does not.
    each = [
        float(marginal_nll(at_ceiling[i : i + 1], loc[i : i + 1], scale[:1], ceiling=4.0, **kw))
        for i in range(3)
    ]
    assert each[0] > each[1] > each[2] > 0
    # Values below the ceiling count by their density, as without one.
    below = torch.tensor([1.0, 2.5, 3.0])
    assert marginal_nll(below, loc, scale, ceiling=4.0, **kw) == marginal_nll(
        below, loc, scale, **kw
    )
