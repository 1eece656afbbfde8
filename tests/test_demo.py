"""The shipped demo teacher: loads offline, reproduces its model card, and the pipeline that made it runs.

The first group reads assets/demo/ (shipped in the repository). The last test runs the whole pipeline,
`hybridlab data build` -> `hybridlab train` -> `hybridlab data ship`, at toy scale through the CLI.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from hybridlab.cli import main as cli
from hybridlab.core.paths import demo_dir
from hybridlab.data.tokens import contiguous_windows, unigram_entropy
from hybridlab.demo.load import CARD_SEQ_LEN, CARD_SUBSET_WINDOWS, DEMO_NAME, load_demo, teacher_dir
from hybridlab.training.pretrain import validation_loss
from tests.test_data import tiny_debs  # noqa: F401, F811  (fixture: real .deb files built with dpkg-deb)


def _card_number(card: str, label: str) -> float:
    match = re.search(re.escape(label) + r"[^|]*\|\s*\**([0-9.]+)", card)
    assert match, f"{label!r} not found in MODEL_CARD.md"
    return float(match.group(1))


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_teacher_loads_offline_with_plain_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer, NemotronHForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(teacher_dir()), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir()), local_files_only=True)
    assert isinstance(model, NemotronHForCausalLM)
    assert model.config.n_groups >= 4 and len(tokenizer) == model.config.vocab_size
    pattern = model.config.hybrid_override_pattern  # M = Mamba2, - = MLP, * = attention
    assert set(pattern) == {"M", "-", "*"} and 16 <= len(pattern) <= 20
    assert 0.04 <= pattern.count("*") / len(pattern) <= 0.12  # the 8B's proportion, roughly
    text = "The kernel schedules tasks."
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert DEMO_NAME == "demo"


def test_demo_data_shapes(demo):
    assert demo.calib.shape == (256, 256) and demo.calib.dtype == torch.int64
    assert demo.val.ndim == 1 and 50_000 <= len(demo.val) <= 1_000_000  # the whole split of 28 packages: 791,245
    vocab = demo.model.config.vocab_size
    assert int(demo.calib.max()) < vocab and int(demo.val.max()) < vocab
    assert next(demo.calib_batches(batch_size=8)).shape == (8, 256)
    assert demo.val_windows(max_windows=3).shape == (3, CARD_SEQ_LEN)
    assert next(demo.model.parameters()).dtype == torch.float32


def test_model_card_loss_is_reproduced_from_the_shipped_files(demo):
    card = (demo_dir() / "MODEL_CARD.md").read_text()
    torch.manual_seed(0)
    loss = validation_loss(demo.model, demo.val_windows(CARD_SEQ_LEN, CARD_SUBSET_WINDOWS), batch_size=8)
    assert loss == pytest.approx(_card_number(card, "validation loss, test subset"), abs=1e-3)
    assert math.exp(loss) == pytest.approx(_card_number(card, "perplexity, test subset"), rel=2e-3)
    recorded = json.loads((demo_dir() / "teacher_eval.json").read_text())
    assert loss == pytest.approx(recorded["subset_val_loss"], abs=1e-3)


def test_teacher_is_clearly_a_language_model(demo):
    card = (demo_dir() / "MODEL_CARD.md").read_text()
    entropy = unigram_entropy(np.load(demo_dir() / "val.npy"), demo.model.config.vocab_size)
    assert entropy == pytest.approx(_card_number(card, "unigram entropy of the validation tokens"), abs=1e-4)
    full_loss = _card_number(card, "validation loss, whole split")
    assert full_loss < entropy - 1.5, "the teacher must beat the best context-free model by a wide margin"


def test_pipeline_reproduces_a_shipped_demo_at_toy_scale(tmp_path, tiny_debs):
    corpus, run, dest = tmp_path / "corpus", tmp_path / "run", tmp_path / "assets" / "demo"
    assert (
        cli(
            [
                "data",
                "build",
                "--out",
                str(corpus),
                "--debs",
                str(tiny_debs),
                "--vocab-size",
                "300",
                "--val-fraction",
                "0.3",
                "--sources",
                "linux-doc-6.1,python3.11-doc",  # the packages tiny_debs fakes
            ]
        )
        == 0
    )
    tiny = dict(
        hybrid_override_pattern="M-*",
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        mamba_num_heads=4,
        mamba_head_dim=16,
        n_groups=4,
        ssm_state_size=8,
        chunk_size=8,
    )
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))
    assert (
        cli(
            [
                "train",
                "--data",
                str(corpus),
                "--out",
                str(run),
                "--config",
                str(tmp_path / "tiny.json"),
                "--tokens",
                "4096",
                "--batch-size",
                "4",
                "--seq-len",
                "64",
                "--eval-every",
                "8",
                "--checkpoint-every",
                "8",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tokens_seen"] == 4096 and summary["val_loss"] < math.log(300)
    # An earlier demo's validation split already sits in dest: the ship keeps it as val_v1.npy and scores it.
    dest.mkdir(parents=True)
    earlier_val = np.load(corpus / "val.npy")[::-1].copy()
    np.save(dest / "val.npy", earlier_val)
    assert (
        cli(
            [
                "data",
                "ship",
                "--run",
                str(run),
                "--data",
                str(corpus),
                "--dest",
                str(dest),
                "--note",
                "Toy run for the test.",
            ]
        )
        == 0
    )
    shipped = load_demo(root=dest)
    card = (dest / "MODEL_CARD.md").read_text()
    loss = validation_loss(shipped.model, shipped.val_windows(CARD_SEQ_LEN, CARD_SUBSET_WINDOWS))
    assert loss == pytest.approx(_card_number(card, "validation loss, test subset"), abs=1e-3)
    assert shipped.model.config.n_groups == 4 and "`M-*` (3 layers" in card and "Toy run for the test." in card
    assert "| precision | float32 |" in card  # the run trained without --bf16
    assert np.array_equal(np.load(dest / "val_v1.npy"), earlier_val)
    v1 = validation_loss(shipped.model, contiguous_windows(earlier_val, CARD_SEQ_LEN))
    assert v1 == pytest.approx(_card_number(card, "validation loss, first demo corpus"), abs=1e-4)
    assert "1. steps 0 → 16: started from scratch; schedule 16 steps (4,096 tokens)" in card
    with pytest.raises(FileNotFoundError, match="hybridlab data build"):
        load_demo(root=tmp_path / "nothing")
