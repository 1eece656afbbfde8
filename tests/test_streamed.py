"""A model run one layer at a time from its files equals the whole model run in memory, bit for bit."""

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, Mamba2Config, NemotronHConfig

from benchmarks.random_checkpoint import write_random_checkpoint
from hybridlab.jobs.kinds.prune import pruned_bytes
from hybridlab.model.checks import check_model
from hybridlab.model.streamed import StreamedModel
from tests.test_weight_files import TINY

CONFIGS = {
    "nemotron_h": lambda: NemotronHConfig(**TINY),
    "mamba2": lambda: Mamba2Config(
        vocab_size=256, hidden_size=32, num_hidden_layers=3, num_heads=8, head_dim=8, n_groups=2, state_size=8,
        expand=2, chunk_size=16, tie_word_embeddings=True,
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "model"
    return write_random_checkpoint(CONFIGS[request.param](), folder, dtype=torch.bfloat16, max_shard_bytes=30_000)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_streamed_layers_equal_the_whole_model(checkpoint, dtype):
    whole = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).eval()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    inputs, outputs = [], []
    blocks = [m for m in whole.modules() if isinstance(m, torch.nn.ModuleList)][0]
    for block in blocks:
        block.register_forward_pre_hook(lambda m, args, kwargs: inputs.append(args[0]), with_kwargs=True)
        block.register_forward_hook(lambda m, args, output: outputs.append(output))
    with torch.no_grad():
        reference = whole(ids, attention_mask=mask)
    streamed = StreamedModel(checkpoint, dtype=dtype)
    stream = streamed.embed(ids, mask)
    assert torch.equal(stream.hidden, inputs[0])
    for i in range(streamed.num_layers):
        with streamed.layer(i):
            stream = streamed.run_layer(i, replace(stream, hidden=inputs[i]))
        assert torch.equal(stream.hidden, outputs[i]), f"layer {i}"
    assert torch.equal(streamed.logits(stream), reference.logits)


def test_only_the_running_layer_holds_weights(checkpoint):
    streamed = StreamedModel(checkpoint)
    real = lambda: [n for n, p in streamed.model.named_parameters() if not p.is_meta]  # noqa: E731
    outside = set(real())
    assert not any(".layers." in n or "embed" in n or "lm_head" in n for n in outside)
    with streamed.layer(1):
        inside = set(real()) - outside
        assert inside and all(".layers.1." in n for n in inside)
    assert set(real()) == outside
    with pytest.raises(RuntimeError, match="not in memory"):
        streamed.run_layer(0, streamed.embed(torch.zeros(1, 4, dtype=torch.long)))


@pytest.mark.parametrize("layer_metric", ["kl", "cosine"])
def test_streamed_importance_equals_in_memory(checkpoint, layer_metric):
    from hybridlab import estimate_importance

    ids = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    batches = [{"input_ids": ids[:3], "attention_mask": mask[:3]}, {"input_ids": ids[3:], "attention_mask": mask[3:]}]
    whole = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    expected = estimate_importance(whole, batches, layer_metric=layer_metric, layer_samples=3)
    got = estimate_importance(StreamedModel(checkpoint), batches, layer_metric=layer_metric, layer_samples=3)
    assert got.meta == expected.meta and got.layer_kinds == expected.layer_kinds
    assert set(got.layers) == set(expected.layers) == ({"cosine", "kl", "loss"} if layer_metric == "kl" else {"cosine"})
    for metric in expected.layers:
        assert torch.equal(got.layers[metric], expected.layers[metric]), metric
    assert torch.equal(got.hidden, expected.hidden)
    for table in ("ffn", "attention", "mamba"):
        theirs, ours = getattr(expected, table), getattr(got, table)
        assert theirs.keys() == ours.keys()
        for layer in theirs:
            assert torch.equal(ours[layer], theirs[layer]), (table, layer)


SPECS = {
    "nemotron_h": [
        dict(hidden_size=24, ffn_hidden_size=40, mamba_num_heads=4, mamba_head_dim=6, num_attention_heads=2),
        dict(drop_layers=[1], mamba_num_heads=6),
    ],
    "mamba2": [dict(hidden_size=24, mamba_num_heads=4, mamba_head_dim=6), dict(drop_layers=[0, 2])],
}


def _scores(checkpoint):
    from hybridlab import estimate_importance

    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(2))
    return estimate_importance(StreamedModel(checkpoint), [ids], layer_metric="cosine")


def test_streamed_prune_writes_what_in_memory_prune_makes(checkpoint, tmp_path):
    from hybridlab import PruneSpec, estimate_sizes, prune
    from hybridlab.compression.prune import prune_checkpoint
    from hybridlab.model.weight_files import INDEX_FILE, read_weight_files

    family = "mamba2" if "mamba2" in str(checkpoint) else "nemotron_h"
    scores = _scores(checkpoint)
    whole = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    assert whole.dtype == torch.bfloat16
    for i, values in enumerate(SPECS[family]):
        spec = PruneSpec(**values)
        expected = prune(whole, spec, scores)
        expected.save_pretrained(tmp_path / f"memory{i}")
        out = prune_checkpoint(
            StreamedModel(checkpoint), spec, tmp_path / f"streamed{i}", scores, max_shard_bytes=8_000
        )
        assert (out / INDEX_FILE).is_file() and (out / "config.json").is_file()
        ours, theirs = read_weight_files(out), read_weight_files(tmp_path / f"memory{i}")
        assert set(ours.tensors) == set(theirs.tensors)
        for name in theirs.tensors:
            assert torch.equal(ours.load(name), theirs.load(name)), name
        reloaded = AutoModelForCausalLM.from_pretrained(out)
        assert reloaded.dtype == torch.bfloat16
        assert sum(p.numel() for p in reloaded.parameters()) == estimate_sizes(whole.config, spec).params
        ids = torch.randint(0, 256, (1, 12))
        assert torch.equal(reloaded(ids).logits, expected(ids).logits)


def test_a_crash_mid_write_leaves_no_folder(checkpoint, tmp_path, monkeypatch):
    from hybridlab import PruneSpec
    from hybridlab.compression.prune import prune_checkpoint
    from hybridlab.model.weight_files import ShardWriter

    flush = ShardWriter._flush
    calls = []

    def failing_flush(self):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        flush(self)

    monkeypatch.setattr(ShardWriter, "_flush", failing_flush)
    with pytest.raises(OSError, match="disk full"):
        prune_checkpoint(
            StreamedModel(checkpoint),
            PruneSpec(drop_layers=[0]),
            tmp_path / "out",
            ranking="random",
            max_shard_bytes=8_000,
        )
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary sibling


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    """A bf16 NemotronH checkpoint and calibration tokens, for the commands."""
    import numpy as np

    root = tmp_path_factory.mktemp("cli")
    model = write_random_checkpoint(NemotronHConfig(**TINY), root / "bf16", max_shard_bytes=30_000)
    np.save(root / "calib.npy", np.random.default_rng(0).integers(0, 256, 4096).astype(np.uint16))
    return model, root / "calib.npy"


def _cli(args, workspace):
    from hybridlab.cli import main

    return main([*args, "--workspace", str(workspace)])


@pytest.mark.parametrize("streaming", ["--streaming", "--no-streaming"])
def test_prune_keeps_the_checkpoint_dtype_unless_told(cli_inputs, tmp_path, streaming):
    model, calib = cli_inputs
    common = ["--model", str(model), "--calib", str(calib), "--samples", "8", "--seq-len", "32", streaming]
    assert _cli(["prune", *common, "--hidden-size", "24", "--out", str(tmp_path / "kept")], tmp_path / "ws") == 0
    out = ["prune", *common, "--hidden-size", "24", "--dtype", "float32", "--out", str(tmp_path / "fp32")]
    assert _cli(out, tmp_path / "ws") == 0
    for folder, dtype in (("kept", torch.bfloat16), ("fp32", torch.float32)):
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / folder)
        assert {p.dtype for p in reloaded.parameters()} == {dtype}
        assert reloaded.config.dtype == dtype
        # the free-space check before pruning expects about what was written
        spec = {"model": str(model), "spec": {"hidden_size": 24}, "dtype": "auto" if folder == "kept" else "float32"}
        written = sum(f.stat().st_size for f in (tmp_path / folder).glob("*.safetensors"))
        assert 0.9 <= pruned_bytes(spec, check_model(model)) / written <= 1.1


def test_streaming_is_chosen_when_memory_is_short_and_refused_when_even_that_cannot_fit(
    cli_inputs, tmp_path, monkeypatch, capsys
):
    import hybridlab.model.memory as memory

    model, calib = cli_inputs
    args = ["importance", "--model", str(model), "--calib", str(calib), "--samples", "8", "--seq-len", "32"]
    args += ["--layer-metric", "cosine"]  # in memory ~1.0 MB, streamed ~0.5 MB for this tiny model
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 1_200_000)
    assert _cli([*args, "--out", str(tmp_path / "s")], tmp_path / "ws") == 0
    assert "streaming one layer at a time" in capsys.readouterr().err
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 100_000)
    assert _cli([*args, "--out", str(tmp_path / "t")], tmp_path / "ws") == 2
    err = capsys.readouterr().err
    assert "is more than the" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_a_prune_is_refused_before_any_work_when_the_disk_has_no_room(cli_inputs, tmp_path, monkeypatch, capsys):
    import shutil

    model, calib = cli_inputs
    need = pruned_bytes({"model": str(model), "spec": {"hidden_size": 24}}, check_model(model))
    real_disk_usage = shutil.disk_usage
    free = {"bytes": need + need // 2}  # room for the checkpoint, not for it and its copy in the workspace
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=free["bytes"]))
    args = ["prune", "--model", str(model), "--calib", str(calib), "--samples", "8", "--seq-len", "32"]
    assert _cli([*args, "--hidden-size", "24", "--out", str(tmp_path / "out")], tmp_path / "ws") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not enough disk space for the pruned checkpoint and its copy in the workspace" in line
    assert "free some space" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "ws" / "artifacts").exists()
    free["bytes"] = need // 2  # a job submitted to the workspace (the dashboard's way) is refused too
    from hybridlab.jobs import submit

    with pytest.raises(ValueError, match="workspace .*not enough disk space for the pruned checkpoint"):
        submit("prune", {"model": str(model), "spec": {"hidden_size": 24}, "ranking": "random"}, tmp_path / "ws")
