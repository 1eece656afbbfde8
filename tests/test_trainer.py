"""The generic training loop: it learns, it resumes on the same curve, it checkpoints when cancelled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybridlab.core.progress import Cancelled
from hybridlab.data.tokens import TokenBatches
from hybridlab.training.checkpoint import load_checkpoint
from hybridlab.training.pretrain import lm_loss, validation_loss
from hybridlab.training.trainer import TrainerSettings, learning_rate, make_optimizer, next_token_loss, train
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


# --- resuming a pretraining run across machines: weights-only snapshots and the run record ---------------

TINY_OVERRIDES = dict(
    hybrid_override_pattern="M-*M-",
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    mamba_num_heads=8,
    mamba_head_dim=4,
    n_groups=2,
    ssm_state_size=8,
    chunk_size=8,
)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """A corpus folder as `hybridlab data build` writes it, with a tiny tokenizer and learnable arrays."""
    from hybridlab.data.tokenizer import save_tokenizer, train_tokenizer
    from hybridlab.data.tokens import save_tokens

    root = tmp_path_factory.mktemp("corpus")
    save_tokenizer(
        train_tokenizer(["the device driver reads the status register"] * 30, vocab_size=300), root / "tokenizer"
    )
    tokens = _tokens()
    save_tokens(root / "train.npy", tokens[:5000])
    save_tokens(root / "val.npy", tokens[5000:5800])
    return root


def _train_settings(**kw):
    from hybridlab.training.pretrain import TrainSettings

    values = dict(
        batch_size=2,
        seq_len=16,
        token_budget=12 * 2 * 16,
        lr=3e-3,
        warmup_steps=3,
        eval_every=4,
        checkpoint_every=3,
        eval_windows=4,
        threads=1,
        rewarm_steps=0,
        log_every=1,
    )
    values.update(kw)
    return TrainSettings(**values)


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stop_at(step: int, total: int = 12):
    def progress(fraction, message, metrics):
        if round(fraction * total) >= step:
            raise Cancelled()

    return progress


def _tiny_model_like(folder):
    from hybridlab.training.pretrain import build_model

    config = json.loads((folder / "config.json").read_text())
    ids = (config["vocab_size"], config["bos_token_id"], config["eos_token_id"], config["pad_token_id"])
    return build_model("demo-teacher", *ids, TINY_OVERRIDES)


def _run(corpus, out, settings, **kw):
    from hybridlab.training.pretrain import train_language_model

    return train_language_model(corpus, out, settings, config_overrides=TINY_OVERRIDES, **kw)


def test_a_weights_only_snapshot_resumes_the_same_step_schedule_and_batches(tiny_corpus, tmp_path):
    from safetensors.torch import load_file

    from hybridlab.training.pretrain import load_snapshot_weights
    from hybridlab.training.snapshot import export_snapshot

    quiet = lambda *a: None  # noqa: E731
    saved_at_six = {}

    def keep_step_six(fraction, message, metrics):
        if round(fraction * 12) == 6:  # checkpoint_every=3: checkpoint/ holds step 6's weights now
            saved_at_six.update(load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors")))

    _run(tiny_corpus, tmp_path / "full", _train_settings(), progress=keep_step_six)
    uninterrupted = [r for r in _records(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"]

    with pytest.raises(Cancelled):
        _run(tiny_corpus, tmp_path / "part", _train_settings(), progress=_stop_at(6))
    state = export_snapshot(tmp_path / "part", tmp_path / "snap", dtype="float32")
    assert (state["step"], state["tokens"]) == (6, 6 * 32)
    snap = _tiny_model_like(tmp_path / "snap")
    assert load_snapshot_weights(snap, tmp_path / "snap") == "float32"
    assert set(snap.state_dict()) == set(saved_at_six)
    for name, tensor in snap.state_dict().items():  # the weights at the resume point are the uninterrupted run's
        assert torch.equal(tensor, saved_at_six[name]), name

    _run(tiny_corpus, tmp_path / "resumed", _train_settings(), progress=quiet, resume_weights=tmp_path / "snap")
    resumed = [r for r in _records(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in resumed] == list(range(1, 13))  # the curve carried over, no step twice
    same = ("step", "tokens", "lr", "grad_norm", "loss")  # all but wall time
    assert [[r[k] for k in same] for r in resumed[:6]] == [[r[k] for k in same] for r in uninterrupted[:6]]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in uninterrupted]  # the same schedule by step
    # Step 7's loss is computed before its update: same weights and the same batch give the same number.
    assert resumed[6]["loss"] == uninterrupted[6]["loss"]
    assert resumed[7]["loss"] != uninterrupted[7]["loss"]  # fresh AdamW moments from there on

    record = json.loads((tmp_path / "resumed" / "run.json").read_text())
    first, second = record["segments"]
    assert (first["kind"], first["start_step"], first["end_step"], first["ended"]) == ("fresh", 0, 6, "cancelled")
    assert (second["kind"], second["start_step"], second["end_step"], second["ended"]) == ("weights", 6, 12, "finished")
    assert second["start_tokens"] == 6 * 32 and second["end_tokens"] == 12 * 32
    assert second["snapshot_dtype"] == "float32" and second["rewarm_steps"] == 0
    for segment in (first, second):
        assert segment["threads"] == 1 and segment["torch"] == torch.__version__
        assert segment["machine"]["host"] and isinstance(segment["fast_mamba"], bool)
        assert segment["schedule"] == {"token_budget": 384, "total_steps": 12}


def test_bf16_snapshot_rewarms_and_full_checkpoint_resume_adds_a_segment(tiny_corpus, tmp_path):
    from safetensors.torch import load_file

    from hybridlab.training.pretrain import load_snapshot_weights
    from hybridlab.training.snapshot import export_snapshot
    from hybridlab.training.trainer import scheduled_learning_rate

    with pytest.raises(Cancelled):
        _run(tiny_corpus, tmp_path / "part", _train_settings(), progress=_stop_at(3))
    with pytest.raises(Cancelled):
        _run(tiny_corpus, tmp_path / "part", _train_settings(), progress=_stop_at(6), resume=True)
    export_snapshot(tmp_path / "part", tmp_path / "snap")  # bfloat16
    ckpt = load_file(str(tmp_path / "part" / "checkpoint" / "model.safetensors"))
    model = _tiny_model_like(tmp_path / "snap")
    assert load_snapshot_weights(model, tmp_path / "snap") == "bfloat16"
    for name, value in model.state_dict().items():  # fp32 master weights: the checkpoint rounded to bf16
        assert value.dtype == torch.float32 and torch.equal(value, ckpt[name].to(torch.bfloat16).float()), name

    settings = _train_settings(rewarm_steps=4)
    _run(tiny_corpus, tmp_path / "resumed", settings, progress=lambda *a: None, resume_weights=tmp_path / "snap")
    lrs = {r["step"]: r["lr"] for r in _records(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "train"}
    from hybridlab.training.trainer import TrainerSettings

    schedule = TrainerSettings(total_steps=12, lr=3e-3, warmup_steps=3)
    for step in range(7, 13):  # lr logged at step s+1 is the one used for optimizer step s
        ramp = min(1.0, (step - 1 - 6 + 1) / 4)
        assert lrs[step] == pytest.approx(scheduled_learning_rate(step - 1, schedule) * ramp)
    kinds = [
        (s["kind"], s["start_step"], s.get("end_step"))
        for s in json.loads((tmp_path / "resumed" / "run.json").read_text())["segments"]
    ]
    assert kinds == [("fresh", 0, 3), ("checkpoint", 3, 6), ("weights", 6, 12)]


def test_resuming_with_other_batches_or_a_non_snapshot_is_refused_before_work(tiny_corpus, tmp_path):
    from hybridlab.core.errors import UserError
    from hybridlab.training.snapshot import export_snapshot

    with pytest.raises(Cancelled):
        _run(tiny_corpus, tmp_path / "part", _train_settings(), progress=_stop_at(3))
    export_snapshot(tmp_path / "part", tmp_path / "snap")
    with pytest.raises(UserError, match="batch_size=2"):
        _run(tiny_corpus, tmp_path / "other", _train_settings(batch_size=4), resume_weights=tmp_path / "snap")
    with pytest.raises(UserError, match="not a training snapshot"):
        _run(tiny_corpus, tmp_path / "other", _train_settings(), resume_weights=tmp_path / "part")
    with pytest.raises(UserError, match="exclude each other"):
        _run(tiny_corpus, tmp_path / "part", _train_settings(), resume=True, resume_weights=tmp_path / "snap")
    with pytest.raises(UserError, match="raise --tokens"):
        _run(tiny_corpus, tmp_path / "other", _train_settings(token_budget=3 * 32), resume_weights=tmp_path / "snap")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("native", [True, False], ids=["native-kernel", "pytorch"])
@pytest.mark.parametrize("vocab", [17, 8192])  # a row shorter than one vector; the demo's vocabulary
def test_next_token_loss_equals_the_sliced_cross_entropy(native, vocab, monkeypatch):
    from hybridlab.model import native as native_kernels

    if native and native_kernels.kernels() is None:
        pytest.skip("the native kernels do not build here")
    if not native:
        monkeypatch.setattr(native_kernels, "kernels", lambda: None)
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 11, vocab, generator=generator) * 8).requires_grad_()  # peaked rows, as trained
    ids = torch.randint(0, vocab, (3, 11), generator=generator)
    for reduction in ("mean", "sum"):
        want = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction=reduction)
        got = next_token_loss(logits, ids, reduction=reduction)
        assert torch.allclose(got, want, rtol=1e-6)
        (want_grad,) = torch.autograd.grad(want, logits)
        (got_grad,) = torch.autograd.grad(got, logits)
        assert (got_grad - want_grad).abs().max() <= 1e-5 * want_grad.abs().max()
        assert got_grad[:, -1].abs().max() == 0
    with torch.no_grad():
        logits[1, 4, vocab // 2] = float("nan")  # a NaN logit gives a NaN loss, as F.cross_entropy does
    assert next_token_loss(logits, ids).isnan() and F.cross_entropy(logits.flatten(0, 1), ids.flatten()).isnan()
    (grad,) = torch.autograd.grad(next_token_loss(logits, ids, reduction="sum"), logits)
    assert grad[1, 4].isnan().all() and not grad[0].isnan().any()
    with torch.no_grad():  # in a row whose target is ignored (the last position) it counts for nothing
        logits[1, 4, vocab // 2] = 0.0
        logits[2, -1, vocab // 3] = float("nan")
    want = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert not want.isnan() and torch.allclose(next_token_loss(logits, ids), want, rtol=1e-6)
    (grad,) = torch.autograd.grad(next_token_loss(logits, ids), logits)
    assert not grad[:, :-1].isnan().any()  # (PyTorch's log-softmax backward leaves that row's NaN in it)
    with pytest.raises(ValueError, match="reduction"):
        next_token_loss(logits, ids, reduction="average")


def test_a_checkpoint_from_a_non_fused_adamw_resumes_fused(tmp_path):
    from hybridlab.training.checkpoint import save_checkpoint

    model = _model()
    settings = _settings()
    old = make_optimizer(model, settings)
    for group in old.param_groups:  # as saved before make_optimizer chose the fused kernel
        group["fused"] = None
    model(torch.randint(3, 100, (2, 8))).logits.sum().backward()
    old.step()
    save_checkpoint(tmp_path / "checkpoint", model, old, {"step": 1, "tokens": 16, "wall_s": 0.0})
    optimizer = make_optimizer(model, settings)
    load_checkpoint(tmp_path / "checkpoint", model, optimizer)
    assert all(group["fused"] for group in optimizer.param_groups)
    optimizer.step()  # the fused kernel accepts the restored state


def test_in_training_validation_reads_windows_spread_over_the_split_and_older_runs_keep_their_first_windows(
    tiny_corpus, tmp_path
):
    import numpy as np
    from transformers import AutoModelForCausalLM

    from hybridlab.data.tokens import contiguous_windows, load_tokens, spread_windows
    from hybridlab.training.pretrain import validation_loss

    def quiet(fraction, message, metrics):
        pass

    def last_eval(out):
        return [r for r in _records(out / "metrics.jsonl") if r["kind"] == "eval"][-1]["val_loss"]

    def final_model(out):
        return AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()

    val = load_tokens(tiny_corpus / "val.npy")
    with pytest.raises(Cancelled):
        _run(tiny_corpus, tmp_path / "old", _train_settings(), progress=_stop_at(6))
    record = json.loads((tmp_path / "old" / "run.json").read_text())
    assert record["settings"]["eval_spread"] is True  # a new run spreads its windows
    del record["settings"]["eval_spread"]  # as a run recorded before the setting existed
    (tmp_path / "old" / "run.json").write_text(json.dumps(record))
    with pytest.raises(Cancelled):
        _run(tiny_corpus, tmp_path / "old", _train_settings(), progress=_stop_at(9), resume=True)
    _run(tiny_corpus, tmp_path / "old", _train_settings(), progress=quiet, resume=True)  # resumed twice
    _run(tiny_corpus, tmp_path / "new", _train_settings(), progress=quiet)
    assert json.loads((tmp_path / "old" / "run.json").read_text())["settings"]["eval_spread"] is False
    with torch.no_grad():
        for run, windows in (("old", contiguous_windows(val, 16, 4)), ("new", spread_windows(val, 16, 4))):
            assert last_eval(tmp_path / run) == pytest.approx(
                validation_loss(final_model(tmp_path / run), windows), rel=1e-5
            )
    spread = spread_windows(np.arange(1000, dtype=np.uint16), 16, 4)  # 62 windows fit; 4 taken, first to last
    assert spread[:, 0].tolist() == [0, 320, 656, 976] and spread.shape == (4, 16)
    assert torch.equal(
        spread_windows(np.arange(40, dtype=np.uint16), 16, 4), contiguous_windows(np.arange(40, dtype=np.uint16), 16)
    )


def test_the_schedule_names_a_segment_killed_before_its_first_checkpoint():
    from hybridlab.training.run_record import schedule_summary

    machine = {"cpu": "test CPU", "host": "h"}
    common = {"kind": "checkpoint", "schedule": {"total_steps": 100, "token_budget": 1000}, "machine": machine}
    common |= {"threads": 2, "torch": "2.13", "fast_mamba": True}
    killed = {**common, "index": 0, "start_step": 40}  # no end, nothing saved
    finished = {**common, "index": 1, "start_step": 40, "end_step": 100, "ended": "finished", "wall_s": 60.0}
    lines = schedule_summary([killed, finished])
    assert lines[0].startswith("1. steps 40 → 40: ") and "killed before its first checkpoint" in lines[0]
    assert "None" not in lines[0]
    assert lines[1].startswith("2. steps 40 → 100: ") and lines[1].endswith("finished")
