"""Reading checkpoints from their safetensors headers, and writing them shard by shard."""

import json
import struct

import pytest
import torch
from transformers import AutoModelForCausalLM, NemotronHConfig

from benchmarks.random_checkpoint import write_random_checkpoint
from hybridlab.model.weight_files import INDEX_FILE, plan_shards, read_weight_files

TINY = dict(
    vocab_size=256, hidden_size=32, hybrid_override_pattern="M-*-", num_hidden_layers=4, intermediate_size=64,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_num_heads=8, mamba_head_dim=8, n_groups=2,
    ssm_state_size=8, chunk_size=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return write_random_checkpoint(NemotronHConfig(**TINY), tmp_path_factory.mktemp("ck") / "m", max_shard_bytes=20_000)


def test_random_checkpoint_is_sharded_in_save_pretrained_names_and_loads_exactly(sharded, tmp_path):
    files = read_weight_files(sharded)
    assert len({info.file for info in files.tensors.values()}) > 2 and (sharded / INDEX_FILE).is_file()
    assert files.dtype == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(sharded)
    assert model.dtype == torch.bfloat16
    model.save_pretrained(tmp_path / "resaved")
    assert set(read_weight_files(tmp_path / "resaved").tensors) == set(files.tensors)
    for name in files.tensors:  # every tensor read alone equals what transformers loaded
        resaved = read_weight_files(tmp_path / "resaved")
        assert torch.equal(files.load(name), resaved.load(name)), name
    assert files.nbytes == sum(p.numel() * 2 for p in model.parameters())


def test_plan_shards_keeps_order_and_limit():
    sizes = [("a", 5), ("b", 5), ("c", 20), ("d", 1)]
    assert plan_shards(sizes, 10) == [["a", "b"], ["c"], ["d"]]
    assert plan_shards([], 10) == []


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_shard_is_named(sharded, tmp_path):
    broken = _copy(sharded, tmp_path / "b")
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"{shard.name}.*truncated"):
        read_weight_files(broken)


@pytest.mark.parametrize(
    "content", [b"", b"garbage", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"nope"]
)
def test_garbage_weights_are_refused(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ValueError, match="not a complete safetensors file"):
        read_weight_files(tmp_path)


def test_missing_shard_and_bad_index(sharded, tmp_path):
    broken = _copy(sharded, tmp_path / "m")
    sorted(broken.glob("model-*.safetensors"))[0].unlink()
    with pytest.raises(ValueError, match="missing; copy every shard"):
        read_weight_files(broken)
    (broken / INDEX_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not a valid shard index"):
        read_weight_files(broken)
    index = json.loads((sharded / INDEX_FILE).read_text())
    first, second = sorted(set(index["weight_map"].values()))[:2]
    name = next(k for k, v in index["weight_map"].items() if v == first)
    index["weight_map"][name] = second
    (broken / INDEX_FILE).write_text(json.dumps(index))
    (broken / first).write_bytes((sharded / first).read_bytes())
    with pytest.raises(ValueError, match=f"places {name} in {second}"):
        read_weight_files(broken)


def test_pickle_only_and_empty_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no model.safetensors"):
        read_weight_files(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle weights"):
        read_weight_files(tmp_path)
