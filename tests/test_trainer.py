"""The generic training loop: it learns, it resumes on the same curve, it checkpoints when cancelled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hybridlab.core.progress import Cancelled
from hybridlab.data.tokens import TokenBatches
from hybridlab.training.checkpoint import load_checkpoint
from hybridlab.training.pretrain import lm_loss, validation_loss
from hybridlab.training.trainer import TrainerSettings, learning_rate, make_optimizer, train
from tests.conftest import tiny_nemotron_config


def _model(seed: int = 0):
    from transformers import NemotronHForCausalLM

    torch.manual_seed(seed)
    return NemotronHForCausalLM(tiny_nemotron_config())


def _tokens() -> np.ndarray:
    """A learnable stream: a short repeating 'sentence' with a little noise."""
    rng = np.random.default_rng(0)
    base = np.tile(np.arange(10, 42, dtype=np.uint16), 200)
    noise = rng.random(len(base)) < 0.05
    base[noise] = rng.integers(3, 128, noise.sum())
    return base


def _settings(**kw) -> TrainerSettings:
    values = dict(
        total_steps=12,
        lr=3e-3,
        warmup_steps=3,
        log_every=1,
        eval_every=4,
        checkpoint_every=100,
        tokens_per_step=4 * 16,
        bf16_autocast=True,
    )
    values.update(kw)
    return TrainerSettings(**values)


def _losses(path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"}


def test_learning_rate_schedule():
    s = TrainerSettings(total_steps=110, lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    assert [learning_rate(i, s) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert learning_rate(10, s) == pytest.approx(1.0)
    assert learning_rate(60, s) == pytest.approx(0.55)  # half-way down the cosine
    assert learning_rate(110, s) == pytest.approx(0.1)
    lrs = [learning_rate(i, s) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="total_steps"):
        TrainerSettings(total_steps=0).validate()
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainerSettings(total_steps=5, warmup_steps=6).validate()


def test_no_weight_decay_on_norms_and_ssm_vectors():
    model = _model()
    groups = make_optimizer(model, _settings()).param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2), name
    assert groups[0]["weight_decay"] > 0 and groups[1]["weight_decay"] == 0


def test_loss_goes_down(tmp_path):
    model = _model()
    batches = TokenBatches(_tokens(), batch_size=4, seq_len=16, seed=0)
    val = torch.from_numpy(_tokens()[:160].astype(np.int64)).view(10, 16)
    before = validation_loss(model, val)
    result = train(
        model,
        batches.batch,
        lm_loss,
        _settings(total_steps=40, warmup_steps=5),
        tmp_path,
        eval_fn=lambda m: {"val_loss": validation_loss(m, val)},
        progress=lambda *a: None,
    )
    after = validation_loss(model.eval(), val)
    assert after < before - 1.5, (before, after)
    assert result["step"] == 40 and result["tokens"] == 40 * 64
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert (tmp_path / "checkpoint" / "model.safetensors").exists()  # the final step always checkpoints


def test_cancel_saves_a_checkpoint_and_resume_continues_on_the_same_curve(tmp_path):
    batches = TokenBatches(_tokens(), batch_size=4, seq_len=16, seed=3)
    settings = _settings()

    full_dir = tmp_path / "full"
    train(_model(), batches.batch, lm_loss, settings, full_dir, progress=lambda *a: None)
    uninterrupted = _losses(full_dir / "metrics.jsonl")
    assert sorted(uninterrupted) == list(range(1, 13))

    def cancel_after_five(fraction, message, metrics):
        if fraction >= 5 / 12:
            raise Cancelled()

    part_dir = tmp_path / "part"
    with pytest.raises(Cancelled):
        train(_model(), batches.batch, lm_loss, settings, part_dir, progress=cancel_after_five)
    state = torch.load(part_dir / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 5 and state["tokens"] == 5 * 64

    # A different initialisation proves the weights come from the checkpoint, not from the seed.
    train(_model(seed=99), batches.batch, lm_loss, settings, part_dir, progress=lambda *a: None, resume=True)
    resumed = _losses(part_dir / "metrics.jsonl")
    assert sorted(resumed) == list(range(1, 13))  # no duplicated or missing steps in the log
    assert resumed == uninterrupted  # bit-identical losses after the resume


def test_checkpoint_round_trip_restores_weights_and_optimizer(tmp_path):
    model = _model()
    batches = TokenBatches(_tokens(), batch_size=2, seq_len=16, seed=0)
    train(model, batches.batch, lm_loss, _settings(total_steps=3), tmp_path, progress=lambda *a: None)
    other = _model(seed=5)
    optimizer = make_optimizer(other, _settings())
    state = load_checkpoint(tmp_path / "checkpoint", other, optimizer)
    assert state["step"] == 3
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(optimizer.state) == sum(1 for p in other.parameters() if p.requires_grad)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere", other)
