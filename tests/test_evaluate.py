"""Evaluation: validation loss, KL to a teacher, the continuation task and the lm-eval bridge."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize, tiny_nemotron_config

from hybridlab.measure.evaluate import evaluate, kl_to_teacher, token_windows, validation_loss
from hybridlab.measure.lmeval.continuation import build_continuation_items
from hybridlab.measure.lmeval.harness import prepare_task_manager, run_lm_eval

WORDS = {
    "adj": "quiet old bright small heavy green cold busy careful tired".split(),
    "noun": "miller river compiler student librarian baker glacier bee tailor engine".split(),
    "verb": "watches follows carries builds finds paints repairs visits counts reads".split(),
    "place": "mill valley library harbour kitchen station garden bridge market forest".split(),
}


def make_documents(count: int, sentences: int, seed: int) -> list[str]:
    """Deterministic synthetic English: many distinct passages from a small vocabulary."""
    rng = np.random.default_rng(seed)
    pick = lambda kind: WORDS[kind][rng.integers(len(WORDS[kind]))]  # noqa: E731
    return [
        " ".join(
            f"The {pick('adj')} {pick('noun')} {pick('verb')} the {pick('adj')} {pick('noun')} near the {pick('place')}."
            for _ in range(sentences)
        )
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def text_tokenizer():
    from hybridlab.data.tokenizer import to_transformers, train_tokenizer

    return to_transformers(train_tokenizer(make_documents(20, 8, seed=0), vocab_size=320))


@pytest.fixture(scope="module")
def text_tokens(text_tokenizer):
    """About 6k tokens: 24 documents of 12 sentences, each followed by EOS."""
    ids = []
    for document in make_documents(24, 12, seed=1):
        ids += text_tokenizer(document)["input_ids"] + [text_tokenizer.eos_token_id]
    return np.array(ids, dtype=np.uint16)


@pytest.fixture
def text_model(text_tokenizer):
    from transformers import NemotronHForCausalLM

    torch.manual_seed(0)
    return randomize(NemotronHForCausalLM(tiny_nemotron_config(vocab_size=len(text_tokenizer))))


def hand_loss(model, tokens: np.ndarray, seq_len: int, windows: int) -> float:
    """Cross entropy computed window by window with log_softmax and gather."""
    flat = torch.from_numpy(tokens.astype(np.int64))
    losses = []
    with torch.no_grad():
        for k in range(windows):
            inputs = flat[k * seq_len : (k + 1) * seq_len][None]  # [1, T]
            targets = flat[k * seq_len + 1 : (k + 1) * seq_len + 1]  # [T]
            logp = torch.log_softmax(model(input_ids=inputs).logits[0].double(), dim=-1)  # [T, V]
            losses.append(-logp.gather(1, targets[:, None]).squeeze(1))
    return float(torch.cat(losses).mean())


def test_validation_loss_matches_hand_computed_cross_entropy(tiny_nemotron):
    tokens = np.random.default_rng(0).integers(3, 128, size=3 * 16 + 1 + 5).astype(np.uint16)
    tiny_nemotron.train()
    result = validation_loss(tiny_nemotron, tokens, seq_len=16, batch_size=2)
    assert tiny_nemotron.training  # the caller's mode is restored
    assert result["tokens"] == 48  # three windows; the 5 leftover tokens are not scored
    expected = hand_loss(tiny_nemotron.eval(), tokens, seq_len=16, windows=3)
    assert result["loss"] == pytest.approx(expected, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    # batch size, input type and a token cap change nothing but what they should
    assert validation_loss(tiny_nemotron, torch.from_numpy(tokens.astype(np.int64)), 16, 3)["loss"] == pytest.approx(
        result["loss"], abs=1e-5
    )
    capped = validation_loss(tiny_nemotron, tokens, seq_len=16, batch_size=1, max_tokens=40)
    assert capped["tokens"] == 32
    assert capped["loss"] == pytest.approx(hand_loss(tiny_nemotron, tokens, 16, 2), abs=1e-5)


def test_windows_share_one_boundary_token_so_every_token_is_predicted_once():
    windows = token_windows(np.arange(10, dtype=np.uint16), seq_len=3)
    assert windows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]


@pytest.mark.parametrize(
    "tokens, kwargs, match",
    [
        (np.zeros(0, dtype=np.uint16), {}, "at least seq_len"),
        (np.zeros(16, dtype=np.uint16), {"seq_len": 16}, "at least seq_len"),
        (np.zeros((2, 40), dtype=np.uint16), {}, "1-D"),
        (np.zeros(40, dtype=np.uint16), {"seq_len": 0}, "seq_len"),
        (np.zeros(40, dtype=np.uint16), {"seq_len": 8, "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_token_input_is_refused_with_a_clear_message(tiny_nemotron, tokens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        validation_loss(tiny_nemotron, tokens, **kwargs)


def test_kl_is_zero_to_itself_and_positive_to_a_perturbed_copy(tiny_nemotron):
    tokens = np.random.default_rng(1).integers(3, 128, size=65).astype(np.uint16)
    same = kl_to_teacher(tiny_nemotron, tiny_nemotron, tokens, seq_len=16, batch_size=2)
    assert abs(same["kl"]) < 1e-6
    assert same["tokens"] == 64
    assert same["loss"] == pytest.approx(validation_loss(tiny_nemotron, tokens, seq_len=16)["loss"], abs=1e-5)

    student = copy.deepcopy(tiny_nemotron)
    with torch.no_grad():
        student.lm_head.weight.add_(0.5 * torch.randn_like(student.lm_head.weight))
    result = kl_to_teacher(student, tiny_nemotron, tokens, seq_len=16, batch_size=3)
    inputs = torch.from_numpy(tokens[:-1].astype(np.int64))[None]
    with torch.no_grad():
        t_logp = F.log_softmax(tiny_nemotron(input_ids=inputs).logits.double(), -1)
        s_logp = F.log_softmax(student(input_ids=inputs).logits.double(), -1)
    expected = F.kl_div(s_logp, t_logp, log_target=True, reduction="sum") / 64
    # one 64-token pass equals four 16-token windows only if windows are processed independently,
    # so compare with the windowed hand computation instead of the long pass
    windowed = 0.0
    flat = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        for k in range(4):
            x = flat[k * 16 : (k + 1) * 16][None]
            t = F.log_softmax(tiny_nemotron(input_ids=x).logits.double(), -1)
            s = F.log_softmax(student(input_ids=x).logits.double(), -1)
            windowed += float((t.exp() * (t - s)).sum())
    assert result["kl"] > 1e-3
    assert result["kl"] == pytest.approx(windowed / 64, rel=1e-4)
    assert float(expected) > 0


def test_kl_refuses_a_student_with_another_vocabulary(tiny_nemotron):
    from transformers import NemotronHForCausalLM

    other = NemotronHForCausalLM(tiny_nemotron_config(vocab_size=96))
    with pytest.raises(ValueError, match="vocabulary"):
        kl_to_teacher(other, tiny_nemotron, np.zeros(40, dtype=np.uint16), seq_len=8)


def test_continuation_items_are_deterministic_balanced_and_true(text_tokenizer, text_tokens):
    kwargs = dict(num_items=24, context_tokens=12, continuation_tokens=6)
    items = build_continuation_items(text_tokens, text_tokenizer, **kwargs)
    assert items == build_continuation_items(text_tokens, text_tokenizer, **kwargs)
    assert items != build_continuation_items(text_tokens, text_tokenizer, seed=1, **kwargs)
    assert len(items) == 24
    assert Counter(item["label"] for item in items) == {0: 6, 1: 6, 2: 6, 3: 6}
    corpus = text_tokenizer.decode(text_tokens.tolist())
    for item in items:
        gold = item["choices"][item["label"]]
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4  # distractors differ from gold
        assert item["context"] + gold in corpus  # the gold answer really continues the passage
        assert text_tokenizer.eos_token not in item["context"] + "".join(item["choices"])


def test_continuation_items_need_enough_passages(text_tokenizer, text_tokens):
    with pytest.raises(ValueError, match="usable passages"):
        build_continuation_items(text_tokens[:40], text_tokenizer, context_tokens=12, continuation_tokens=6)


def own_accuracy(model, tokenizer, items) -> float:
    """Multiple-choice accuracy by summing continuation log-probabilities, as lm-eval defines it."""
    correct = 0
    with torch.no_grad():
        for item in items:
            scores = []
            for choice in item["choices"]:
                context = tokenizer(item["context"], add_special_tokens=False)["input_ids"]
                whole = tokenizer(item["context"] + choice, add_special_tokens=False)["input_ids"]
                continuation = whole[len(context) :]
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole[:-1]])).logits[0].double(), -1)
                positions = range(len(context) - 1, len(whole) - 1)
                scores.append(sum(float(logp[p, t]) for p, t in zip(positions, continuation)))
            correct += int(np.argmax(scores) == item["label"])
    return correct / len(items)


def test_lm_eval_runs_the_local_task_offline_and_agrees_with_a_direct_computation(
    text_model, text_tokenizer, text_tokens
):
    report = run_lm_eval(text_model, text_tokenizer, ["continuation_mc"], val_tokens=text_tokens, limit=8, batch_size=4)
    metrics = report["continuation_mc"]
    assert metrics["samples"] == 8
    assert 0.0 <= metrics["acc"] <= 1.0 and 0.0 <= metrics["acc_norm"] <= 1.0
    items = build_continuation_items(text_tokens, text_tokenizer)[:8]  # the harness's defaults
    assert metrics["acc"] == pytest.approx(own_accuracy(text_model, text_tokenizer, items))


def test_evaluate_runs_val_loss_and_checks_inputs_before_work(text_model, text_tokenizer, text_tokens):
    report = evaluate(text_model, text_tokenizer, ["val_loss"], val_tokens=text_tokens, seq_len=32)
    assert report["val_loss"] == validation_loss(text_model, text_tokens, seq_len=32)
    with pytest.raises(ValueError, match="--val-tokens"):
        evaluate(text_model, text_tokenizer, ["val_loss"])
    with pytest.raises(ValueError, match="--val-tokens"):
        evaluate(text_model, text_tokenizer, ["continuation_mc"])
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate(text_model, None, ["continuation_mc"], val_tokens=text_tokens)
    with pytest.raises(ValueError, match="no tasks"):
        evaluate(text_model, text_tokenizer, [" "], val_tokens=text_tokens)


def test_unknown_task_name_is_refused_before_loading_data():
    with pytest.raises(ValueError, match="unknown task.*no_such_task_xyz.*continuation_mc"):
        prepare_task_manager(["no_such_task_xyz"])


def test_cli_eval_json_matches_the_library(tmp_path, text_model, text_tokenizer, text_tokens, capsys):
    from hybridlab.cli import main
    from hybridlab.data.tokens import save_tokens
    from hybridlab.model.loading import save_model

    save_model(text_model, text_tokenizer, tmp_path / "model")
    save_tokens(tmp_path / "val.npy", text_tokens)
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "model"),
            "--val-tokens",
            str(tmp_path / "val.npy"),
            "--tasks",
            "val_loss",
            "--seq-len",
            "32",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    expected = validation_loss(text_model, text_tokens, seq_len=32)
    assert printed["tasks"]["val_loss"]["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert printed["tasks"]["val_loss"]["tokens"] == expected["tokens"]
    from hybridlab.jobs import list_evaluations, list_jobs

    recorded = list_evaluations()  # the command ran as a job of the (per-test) workspace's store
    assert list(list_jobs()["kind"]) == ["eval"] and list(recorded["status"]) == ["succeeded"]
    assert recorded["val_loss"][0] == printed["tasks"]["val_loss"]["loss"]


def test_cli_eval_names_a_missing_model_folder(tmp_path, capsys):
    from hybridlab.cli import main

    assert main(["eval", "--model", str(tmp_path / "nope"), "--tasks", "val_loss"]) == 2
    assert "does not exist" in capsys.readouterr().err
    from hybridlab.jobs import list_jobs

    assert list_jobs().empty  # refused before anything was recorded
