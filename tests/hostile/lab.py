"""The bad inputs the hostile suite feeds every surface, built once per test session.

`lab` is a folder of tiny models (good and broken), token files (good and broken), importance
scores (fitting and not), a fake distillation run to resume, and a workspace. `Lab.snapshot()`
lists every file and folder under it (size and mtime), so a row can assert that a refused
command wrote or changed nothing; the store's rows are counted apart (`Lab.rows()`), since
opening SQLite may touch its own files.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridlab.core.errors import is_user_error

TRACEBACK = "Traceback (most recent call last)"
MAX_POSITIONS = 64  # the tiny model's max_position_embeddings
STORE_FILES = re.compile(r"(store|queue)\.db(-wal|-shm|-journal)?$")


@dataclass
class Lab:
    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def p(self, name: str) -> str:
        return str(self.root / name)

    @property
    def ws(self) -> Path:
        return self.root / "ws"

    def snapshot(self) -> dict[str, tuple]:
        """{relative path: (size, mtime_ns)} of every file and folder, the store's files left out."""
        seen = {}
        for path in sorted(self.root.rglob("*")):
            if STORE_FILES.search(path.name):
                continue
            stat = path.stat()
            seen[str(path.relative_to(self.root))] = ("dir",) if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
        return seen

    def rows(self) -> dict[str, int]:
        """Rows of every table of the workspace's store."""
        from hybridlab.store import Store

        store = Store(self.ws)
        try:
            tables = [r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {t: store.query(f'SELECT COUNT(*) FROM "{t}"')[0][0] for t in tables}
        finally:
            store.close()


def check_message(message: str, pattern: str) -> None:
    """One line, naming the problem (`pattern`), no traceback."""
    assert "\n" not in message.strip(), f"more than one line: {message!r}"
    assert TRACEBACK not in message
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def check_user_error(err: BaseException, pattern: str) -> None:
    assert is_user_error(err), f"{type(err).__name__} is not a user error: {err}"
    check_message(str(err), pattern)


def tiny_config(**overrides):
    from conftest import tiny_nemotron_config

    return tiny_nemotron_config(max_position_embeddings=MAX_POSITIONS, **overrides)


def _save_model(folder: Path, config, safe: bool = True):
    from conftest import randomize
    from transformers import NemotronHForCausalLM

    torch.manual_seed(0)
    model = randomize(NemotronHForCausalLM(config))
    model.save_pretrained(folder)
    if not safe:  # transformers writes safetensors whatever it is told: make the pickle file by hand
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return model


def build_lab(root: Path) -> Lab:
    from transformers import LlamaConfig

    from hybridlab.compression.importance import estimate_importance

    lab = Lab(root)
    root.mkdir(parents=True, exist_ok=True)
    model = _save_model(root / "model", tiny_config())
    _save_model(root / "wide", tiny_config(hidden_size=48, intermediate_size=64))
    _save_model(root / "vocab256", tiny_config(vocab_size=256))
    _save_model(root / "pickled", tiny_config(), safe=False)  # pytorch_model.bin only
    weights = (root / "model" / "model.safetensors").read_bytes()
    config = (root / "model" / "config.json").read_text()

    def folder(name: str, config_text: str = config, weight_bytes: bytes | None = weights) -> Path:
        path = root / name
        path.mkdir()
        (path / "config.json").write_text(config_text)
        if weight_bytes is not None:
            (path / "model.safetensors").write_bytes(weight_bytes)
        return path

    folder("truncated", weight_bytes=weights[: len(weights) // 2])
    folder("garbage", weight_bytes=b"this is not a safetensors file at all")
    folder("huge_header", weight_bytes=struct.pack("<Q", 10**12) + b"{}")
    folder("no_weights", weight_bytes=None)
    folder("bad_json", config_text="{not json")
    folder("json_list", config_text="[1, 2, 3]")
    folder("no_model_type", config_text=json.dumps({"hidden_size": 32}))
    folder("unknown_type", config_text=json.dumps({"model_type": "no-such-architecture"}))
    sharded = folder("bad_index", weight_bytes=None)
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}})
    )
    moe = dict(
        n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, moe_shared_expert_intermediate_size=16
    )
    _save_model(root / "moe", tiny_config(hybrid_override_pattern="M-*E", **moe))  # mixture of experts: top 2 of 4
    llama = root / "llama"
    LlamaConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ).save_pretrained(llama)
    (llama / "model.safetensors").write_bytes(weights)

    rng = np.random.default_rng(0)
    tokens = {
        "calib.npy": rng.integers(3, 128, 4_000).astype(np.uint16),
        "rows.npy": rng.integers(3, 128, (8, 64)).astype(np.uint16),
        "big_ids.npy": rng.integers(3, 1_000, 4_000).astype(np.uint16),
        "negative.npy": rng.integers(-3, 100, 4_000).astype(np.int64),
        "floats.npy": rng.random(4_000),
        "bools.npy": rng.random(4_000) > 0.5,
        "cube.npy": rng.integers(3, 128, (4, 4, 4)).astype(np.uint16),
        "empty.npy": np.zeros(0, dtype=np.uint16),
        "short.npy": rng.integers(3, 128, 10).astype(np.uint16),
        "short_rows.npy": rng.integers(3, 128, (8, 8)).astype(np.uint16),
    }
    for name, array in tokens.items():
        np.save(root / name, array)
    np.save(root / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (root / "garbage.npy").write_bytes(b"not an npy file")
    good = (root / "calib.npy").read_bytes()
    (root / "truncated.npy").write_bytes(good[: len(good) // 2])
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("   \n\n\t  \n")
    (root / "empty_jsonl.jsonl").write_text("")
    (root / "no_text").mkdir()
    (root / "no_text" / "notes.csv").write_text("a,b\n")
    (root / "blank_texts").mkdir()
    (root / "blank_texts" / "a.txt").write_text("\n")
    (root / "a_file").write_text("I am a file, not a folder\n")
    (root / "existing_out").mkdir()
    (root / "spec_long.json").write_text(json.dumps({"model": "demo", "name": "x" * 900_000}))
    (root / "spec_big.json").write_text(json.dumps({"model": "demo", "name": "x" * 5_000_000}))

    batches = [torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    scores = estimate_importance(model, batches, layer_metric="cosine")
    scores.save(root / "scores")
    wide = scores.__class__(**{**scores.__dict__, "hidden": torch.rand(48)})  # same pattern, other hidden size
    wide.save(root / "scores_wide")
    wide_ffn = scores.__class__(**{**scores.__dict__, "ffn": {i: torch.rand(64) for i in scores.ffn}})
    wide_ffn.save(root / "scores_wide_ffn")
    other_heads = scores.__class__(**{**scores.__dict__, "mamba": {i: torch.rand(16, 4) for i in scores.mamba}})
    other_heads.save(root / "scores_mamba")
    reversed_kinds = scores.__class__(**{**scores.__dict__, "layer_kinds": tuple(reversed(scores.layer_kinds))})
    reversed_kinds.save(root / "scores_pattern")
    (root / "scores_broken").mkdir()
    (root / "scores_broken" / "scores.json").write_text("{}")
    (root / "scores_broken" / "scores.safetensors").write_bytes(b"garbage")

    run = root / "kd_run"  # a distillation run to resume: its checkpoint and recorded settings
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.pt").write_bytes(b"")
    (run / "checkpoint" / "model.safetensors").write_bytes(b"")
    from dataclasses import asdict

    from hybridlab.training.distill import DistillSettings

    recorded = DistillSettings(tokens=4_096, seq_len=16, batch_size=2)
    (run / "distill_settings.json").write_text(json.dumps(asdict(recorded)))
    (root / "kd_no_checkpoint").mkdir()

    from hybridlab.store import Store

    Store(lab.ws)  # the workspace's store exists before the first row
    return lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Lab:
    return build_lab(tmp_path_factory.mktemp("hostile"))
