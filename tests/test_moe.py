"""Mixture-of-experts pruning on both families (NemotronH `moe` layers, GraniteMoeHybrid with experts), on
tiny random models: routed experts, expert neurons, shared-expert neurons and the hidden size, each checked
against the original with those units masked or zeroed; sizes against transformers' builds (tiny and
published sizes); importance against a deliberately dead expert; streamed against in memory; the CLI."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, NemotronHConfig

from hybridlab import ImportanceScores, PruneSpec, StreamedModel, estimate_importance, estimate_sizes, prune
from hybridlab.cli import main
from hybridlab.compression.importance import EXPERT_METRICS, MOE_EXPERT, MOE_NEURON, SHARED_EXPERT_NEURON
from hybridlab.compression.kept import kept_units
from hybridlab.compression.prune import prune_checkpoint
from hybridlab.families import MOE, describe
from hybridlab.model.weight_files import read_weight_files
from tests.families import exact
from tests.families.tiny import tiny_config, tiny_model

FAMILIES = ["nemotron_h_moe", "granite_moe_hybrid_moe"]
BATCH = torch.randint(3, 128, (3, 16), generator=torch.Generator().manual_seed(5))
MODELS = {family: tiny_model(family) for family in FAMILIES}
SCORES = {family: estimate_importance(MODELS[family], [BATCH], layer_metric="kl") for family in FAMILIES}
# every MoE axis, the hidden size, Mamba heads and a dropped layer (Granite's integer expand: 6 x 16 = 2 x 48)
MIXED = {
    "nemotron_h_moe": PruneSpec(
        num_moe_experts=4, moe_ffn_hidden_size=8, moe_shared_expert_intermediate_size=16, hidden_size=24, num_layers=6
    ),
    "granite_moe_hybrid_moe": PruneSpec(
        num_moe_experts=4,
        moe_ffn_hidden_size=8,
        moe_shared_expert_intermediate_size=48,
        hidden_size=48,
        mamba_num_heads=6,
        num_layers=3,
    ),
}


def moe_layers(model):
    return [layer.sublayer(MOE) for layer in describe(model).parts(model).layers if layer.sublayer(MOE)]


# -- sizes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, overrides",
    [
        ("nemotron_h_moe", {}),
        ("nemotron_h_moe", {"moe_latent_size": 16, "mlp_bias": True}),
        ("nemotron_h_moe", {"moe_latent_size": 16}),
        ("granite_moe_hybrid_moe", {}),
        ("granite_moe_hybrid_moe", {"tie_word_embeddings": False, "mamba_proj_bias": True}),
    ],
)
def test_sizes_equal_what_transformers_builds(family, overrides):
    config = tiny_config(family, **overrides)
    sizes = estimate_sizes(config)
    assert sizes.params == exact.meta_params(config)
    widths = describe(config).widths
    per_expert = (3 if widths.moe_gated else 2) * widths.moe_ffn_hidden_size * widths.moe_expert_input
    idle = widths.count(MOE) * (widths.num_moe_experts - widths.moe_top_k) * per_expert
    assert sizes.active_params == sizes.params - idle > 0


NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
# nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16: 23 Mamba2, 23 MoE (128 experts, top 6, one shared), 6 attention
NANO = dict(
    vocab_size=131072,
    hidden_size=2688,
    hybrid_override_pattern=NANO_PATTERN,
    intermediate_size=1856,
    num_attention_heads=32,
    num_key_value_heads=2,
    head_dim=128,
    mamba_num_heads=64,
    mamba_head_dim=64,
    n_groups=8,
    ssm_state_size=128,
    n_routed_experts=128,
    num_experts_per_tok=6,
    moe_intermediate_size=1856,
    moe_shared_expert_intermediate_size=3712,
    routed_scaling_factor=2.5,
    n_group=1,
    topk_group=1,
)
GRANITE_LAYERS = ["mamba"] * 5 + ["attention"] + (["mamba"] * 9 + ["attention"]) * 3 + ["mamba"] * 4
GRANITE_H = dict(model_type="granitemoehybrid", layer_types=GRANITE_LAYERS, num_hidden_layers=40, mamba_n_groups=1)
# ibm-granite/granite-4.0-h-tiny (about 7B, 1B active) and -small (about 32B, 9B active)
GRANITE_TINY = GRANITE_H | dict(
    vocab_size=100352,
    hidden_size=1536,
    num_attention_heads=12,
    num_key_value_heads=4,
    num_local_experts=64,
    num_experts_per_tok=6,
    intermediate_size=512,
    shared_intermediate_size=1024,
    mamba_n_heads=48,
    mamba_d_head=64,
    mamba_d_state=128,
    tie_word_embeddings=True,
)
GRANITE_SMALL = GRANITE_H | dict(
    vocab_size=100352,
    hidden_size=4096,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_local_experts=72,
    num_experts_per_tok=10,
    intermediate_size=768,
    shared_intermediate_size=1536,
    mamba_n_heads=128,
    mamba_d_head=64,
    mamba_d_state=256,
    tie_word_embeddings=True,
)


@pytest.mark.parametrize(
    "config, total, active",
    [
        (lambda: NemotronHConfig(**NANO), (31.5e9, 31.7e9), (3.4e9, 3.7e9)),
        (lambda: AutoConfig.for_model(**GRANITE_TINY), (6.5e9, 7.5e9), (1.0e9, 1.5e9)),
        (lambda: AutoConfig.for_model(**GRANITE_SMALL), (31e9, 33e9), (8.5e9, 10.5e9)),
    ],
)
def test_published_sizes_from_a_config_equal_transformers_meta_build(config, total, active):
    config = config()
    sizes = estimate_sizes(config)
    assert sizes.params == exact.meta_params(config)
    assert total[0] < sizes.params < total[1] and active[0] < sizes.active_params < active[1]
    widths = describe(config).widths
    kept = widths.moe_top_k * 4
    pruned = estimate_sizes(config, PruneSpec(num_moe_experts=kept))
    assert pruned.params < sizes.params and pruned.flops_per_token < sizes.flops_per_token
    # a token still runs through top-k experts: only the router lost rows
    router_rows = widths.count(MOE) * (widths.num_moe_experts - kept) * widths.hidden_size
    assert sizes.active_params - pruned.active_params == router_rows


# -- pruned == the original with the removed units masked or zeroed --------------------------------------------


def _without_experts(model, kept):
    """The original model in which the experts that `kept` removes can never be chosen: NemotronH's choice
    scores (sigmoid + correction bias) of those experts -inf through the bias; for a softmax-over-top-k router
    (Granite) their logits -inf before the same top-k and softmax."""
    masked = copy.deepcopy(model)
    for index, sub in enumerate(moe_layers(masked)):
        layer = [i for i, kind in enumerate(kept.old.layer_kinds) if MOE in kind][index]
        removed = torch.ones(kept.old.num_moe_experts, dtype=torch.bool)
        removed[kept.units(MOE_EXPERT, layer)] = False
        if sub.parts.router_bias is not None:
            sub.parts.router_bias[removed] = float("-inf")
        else:
            router = sub.parts.module.router

            def masked_top_k(module, args, output, removed=removed):
                logits = output[0].masked_fill(removed, float("-inf"))
                top_logits, top_index = logits.topk(module.top_k, dim=-1)
                return output[0], torch.softmax(top_logits, dim=-1).type_as(output[1]), top_index

            router.register_forward_hook(masked_top_k)
    return masked


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("metric", [*EXPERT_METRICS, "random"])
def test_pruning_experts_equals_masking_them_out_of_the_routing(family, metric):
    model, scores = MODELS[family], SCORES[family]
    spec = PruneSpec(num_moe_experts=4)
    kept = kept_units(scores, model, spec, expert_metric=metric)
    pruned = prune(model, spec, scores, expert_metric=metric)
    reference = exact.logits(_without_experts(model, kept), BATCH)
    assert torch.allclose(exact.logits(pruned, BATCH), reference, atol=exact.ATOL)
    assert not torch.allclose(exact.logits(model, BATCH), reference, atol=1e-3)  # the masking mattered


def test_grouped_routing_keeps_the_same_number_of_experts_in_every_group():
    kept = kept_units(SCORES["nemotron_h_moe"], MODELS["nemotron_h_moe"], PruneSpec(num_moe_experts=6))
    for experts in kept.by_layer[MOE_EXPERT].values():
        assert torch.bincount(experts // 4, minlength=2).tolist() == [3, 3]  # 2 groups of 4 experts


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_expert_neurons_equals_zeroing_them(family):
    model, scores = MODELS[family], SCORES[family]
    spec = PruneSpec(moe_ffn_hidden_size=8)
    kept = kept_units(scores, model, spec)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for index, sub in zip(_moe_layer_indices(kept), moe_layers(zeroed)):
            neurons = kept.units(MOE_NEURON, index)  # [E, 8]
            assert neurons.shape == (kept.old.num_moe_experts, 8)
            for e, mine in enumerate(neurons):
                dropped = torch.ones(kept.old.moe_ffn_hidden_size, dtype=torch.bool)
                dropped[mine] = False
                sub.parts.down_proj[e][:, dropped] = 0  # what those neurons add is gone
    reference = exact.logits(zeroed, BATCH)
    assert torch.allclose(exact.logits(prune(model, spec, scores), BATCH), reference, atol=exact.ATOL)
    assert not torch.allclose(exact.logits(model, BATCH), reference, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_shared_expert_neurons_equals_zeroing_them(family):
    model, scores = MODELS[family], SCORES[family]
    spec = PruneSpec(moe_shared_expert_intermediate_size=16)
    kept = kept_units(scores, model, spec)
    masks = []
    for index, sub in zip(_moe_layer_indices(kept), moe_layers(model)):
        keep = torch.zeros(kept.old.moe_shared_expert_intermediate_size)
        keep[kept.units(SHARED_EXPERT_NEURON, index)] = 1
        masks.append((sub.parts.shared_expert.down_proj, keep))
    exact._check_equals_masked(model, prune(model, spec, scores), masks, BATCH)


def _moe_layer_indices(kept) -> list[int]:
    return [i for i in kept.kept_layers if MOE in kept.old.layer_kinds[i]]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_pruned_tensor_is_the_kept_slice_of_the_original(family):
    exact.check_weights_are_kept_slices(MODELS[family], MIXED[family], SCORES[family])


def test_latent_projections_are_sliced_on_the_hidden_size_and_the_latent_stays():
    model = tiny_model("nemotron_h_moe", moe_latent_size=16, mlp_bias=True)
    scores = estimate_importance(model, [BATCH], layer_metric="cosine")
    spec = PruneSpec(hidden_size=24, num_moe_experts=4, moe_ffn_hidden_size=8)
    exact.check_weights_are_kept_slices(model, spec, scores, layer_metric="cosine")
    pruned = prune(model, spec, scores, layer_metric="cosine")
    assert pruned.config.moe_latent_size == 16 and moe_layers(pruned)[0].parts.up_proj.shape == (4, 8, 16)
    assert torch.isfinite(exact.logits(pruned, BATCH)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_plan_reloads_generates_and_matches_the_plan(family, tmp_path):
    model, spec = MODELS[family], MIXED[family]
    pruned = prune(model, spec, SCORES[family])
    widths = describe(pruned).widths
    assert (widths.num_moe_experts, widths.moe_ffn_hidden_size) == (4, 8)
    assert widths.moe_shared_expert_intermediate_size == spec.moe_shared_expert_intermediate_size
    assert widths.moe_top_k == 2 and widths.moe_n_group == describe(model).widths.moe_n_group
    exact.check_params_equal_plan(model, pruned, spec, SCORES[family])
    exact.check_reloads_identically(pruned, BATCH, tmp_path)
    exact.check_generates_same_tokens_with_and_without_cache(pruned, BATCH[:1, :6])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bfloat16_model_keeps_its_float32_router_and_prunes_exactly(family):
    model = copy.deepcopy(MODELS[family])
    model.to(torch.bfloat16)
    pruned = prune(model, PruneSpec(num_moe_experts=4, hidden_size=32 if "granite" in family else 24), ranking="random")
    want = {
        name: t.dtype
        for name, t in AutoModelForCausalLM.from_config(pruned.config, dtype=torch.bfloat16).named_parameters()
    }
    assert {name: t.dtype for name, t in pruned.named_parameters()} == want


# -- importance -------------------------------------------------------------------------------------------


def _kill_expert(model, expert: int):
    """A copy where `expert` is never chosen (NemotronH: a hugely negative correction bias; Granite: a router row of
    zeros among rows scaled up, so its logit 0 almost never beats two of the others) and outputs nothing."""
    dead = copy.deepcopy(model)
    with torch.no_grad():
        for sub in moe_layers(dead):
            sub.parts.down_proj[expert] = 0
            if sub.parts.router_bias is not None:
                sub.parts.router_bias[expert] = -1e4
            else:
                sub.parts.router_weight.mul_(20)
                sub.parts.router_weight[expert] = 0
    return dead


@pytest.mark.parametrize("family", FAMILIES)
def test_every_expert_metric_ranks_a_dead_expert_last(family):
    dead = _kill_expert(MODELS[family], expert=5)
    batches = [torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    scores = estimate_importance(dead, batches, layer_metric=None)
    assert set(scores.experts) == set(EXPERT_METRICS)
    for metric in EXPERT_METRICS:
        for layer, values in scores.experts[metric].items():
            assert values.argmin() == 5 and (values > 0).sum() >= 7, (metric, layer, values)
    for neurons in scores.moe_neurons.values():  # [E, F]: the dead expert's inputs never arrive
        if "nemotron" in family:
            assert neurons[5].abs().sum() == 0 and neurons.sum() > 0
    kept = kept_units(scores, dead, PruneSpec(num_moe_experts=6))
    assert all(5 not in experts for experts in kept.by_layer[MOE_EXPERT].values())


def test_scores_round_trip_and_old_files_without_expert_tables_still_load(tmp_path):
    scores = SCORES["nemotron_h_moe"]
    back = ImportanceScores.load(scores.save(tmp_path / "scores"))
    for metric in EXPERT_METRICS:
        for layer, values in scores.experts[metric].items():
            assert torch.equal(back.experts[metric][layer], values)
    assert all(torch.equal(back.moe_neurons[i], t) for i, t in scores.moe_neurons.items())
    assert all(torch.equal(back.shared_experts[i], t) for i, t in scores.shared_experts.items())
    frame = back.to_frame()
    assert {f"moe_expert_{m}" for m in EXPERT_METRICS} | {"moe_neuron", "shared_expert_neuron"} <= set(frame.axis)
    # a dense model's scores hold no expert tensors, as files saved before the expert tables existed
    dense = estimate_importance(tiny_model("nemotron_h"), [BATCH], layer_metric=None).save(tmp_path / "dense")
    old = ImportanceScores.load(dense)
    assert old.experts == {} and old.moe_neurons == {} and old.shared_experts == {}


# -- streamed == in memory -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_importance_and_prune_equal_in_memory(family, tmp_path):
    folder = tmp_path / "model"
    MODELS[family].save_pretrained(folder)
    whole = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(3, 128, (4, 24), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    batches = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    expected = estimate_importance(whole, batches, layer_metric="cosine")
    got = estimate_importance(StreamedModel(folder), batches, layer_metric="cosine")
    for metric in EXPERT_METRICS:
        for layer, values in expected.experts[metric].items():
            assert torch.equal(got.experts[metric][layer], values)
    for table in ("moe_neurons", "shared_experts", "mamba", "attention", "ffn"):
        theirs, ours = getattr(expected, table), getattr(got, table)
        assert theirs.keys() == ours.keys() and all(torch.equal(ours[i], theirs[i]) for i in theirs), table
    spec = MIXED[family]
    prune(whole, spec, expected, layer_metric="cosine").save_pretrained(tmp_path / "memory")
    prune_checkpoint(StreamedModel(folder), spec, tmp_path / "streamed", expected, layer_metric="cosine")
    ours, theirs = read_weight_files(tmp_path / "streamed"), read_weight_files(tmp_path / "memory")
    assert set(ours.tensors) == set(theirs.tensors)
    for name in theirs.tensors:
        assert torch.equal(ours.load(name), theirs.load(name)), name


# -- refusals and the CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, values, message",
    [
        (
            "nemotron_h_moe",
            {"num_moe_experts": 3},
            r"top 2 experts from its best 1 of 2 expert groups; keep at least 4",
        ),
        ("nemotron_h_moe", {"num_moe_experts": 5}, r"multiple of the router's 2 expert groups.*try 4"),
        ("granite_moe_hybrid_moe", {"num_moe_experts": 1}, r"top 2 experts; keep at least 2"),
        ("granite_moe_hybrid_moe", {"moe_ffn_hidden_size": 0}, r"moe_ffn_hidden_size must be at least 1"),
        ("granite_moe_hybrid_moe", {"moe_ffn_hidden_size": 12}, r"grouped_mm.*try moe_ffn_hidden_size=8 or 16"),
        ("granite_moe_hybrid_moe", {"ffn_hidden_size": 32}, r"ffn_hidden_size was given but this model has no layers"),
        ("nemotron_h_moe", {"num_moe_experts": 16}, r"larger than the model's 8"),
        ("nemotron_h", {"num_moe_experts": 2}, r"num_moe_experts was given but this model has no layers"),
    ],
)
def test_impossible_plans_are_refused_before_work(family, values, message):
    with pytest.raises(ValueError, match=message):
        prune(MODELS[family] if family in MODELS else tiny_model(family), PruneSpec.from_dict(values), ranking="random")


@pytest.mark.parametrize(
    "family, flags, message",
    [
        ("nemotron_h_moe", ["--num-moe-experts", "1"], "keep at least 4"),
        ("granite_moe_hybrid_moe", ["--moe-ffn-hidden-size", "0"], "moe_ffn_hidden_size must be at least 1"),
        ("nemotron_h", ["--moe-shared-expert-intermediate-size", "8"], "no layers with that axis"),
    ],
)
def test_the_cli_refuses_bad_moe_plans_in_one_line(family, flags, message, tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_model(family).save_pretrained(folder)
    capsys.readouterr()  # save_pretrained's progress bar
    for command in (["plan", "--model", str(folder)], ["prune", "--model", str(folder), "--ranking", "random"]):
        out = [] if command[0] == "plan" else ["--out", str(tmp_path / "out")]
        assert main([*command, *flags, *out]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_importance_plan_and_prune_on_every_moe_axis(family, tmp_path, capsys):
    folder, calib = tmp_path / "model", tmp_path / "calib.npy"
    MODELS[family].save_pretrained(folder)
    np.save(calib, np.random.default_rng(0).integers(3, 128, 4096).astype(np.uint16))
    common = ["--model", str(folder), "--calib", str(calib), "--samples", "4", "--seq-len", "16"]
    assert main(["importance", *common, "--layer-metric", "cosine", "--out", str(tmp_path / "scores")]) == 0
    assert "moe_expert_routing_mass" in capsys.readouterr().out
    spec = MIXED[family].to_dict()
    flags = [x for key, value in spec.items() for x in (f"--{key.replace('_', '-')}", str(value))]
    assert main(["plan", "--model", str(folder), *flags]) == 0
    assert "active parameters per token" in capsys.readouterr().out
    argv = ["prune", *common, "--scores", str(tmp_path / "scores"), "--layer-metric", "cosine", *flags]
    assert main([*argv, "--expert-metric", "gated_output_norm", "--out", str(tmp_path / "pruned")]) == 0
    out = capsys.readouterr().out
    assert "active parameters per token" in out
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    widths = describe(pruned).widths
    assert (widths.num_moe_experts, widths.moe_ffn_hidden_size, widths.hidden_size) == (
        spec["num_moe_experts"],
        spec["moe_ffn_hidden_size"],
        spec["hidden_size"],
    )
    assert sum(p.numel() for p in pruned.parameters()) == estimate_sizes(pruned.config).params


@pytest.mark.parametrize("family", FAMILIES)
def test_a_streamed_prune_job_scores_the_model_and_prunes_every_moe_axis(family, tmp_path):
    from hybridlab.jobs import run_sync

    folder, calib = tmp_path / "model", tmp_path / "calib.npy"
    MODELS[family].save_pretrained(folder)
    np.save(calib, np.random.default_rng(0).integers(3, 128, 4096).astype(np.uint16))
    spec = MIXED[family].to_dict()
    values = {"model": str(folder), "calib": str(calib), "samples": 4, "seq_len": 16, "spec": spec}
    job = run_sync("prune", values | {"streaming": True, "expert_metric": "random", "layer_metric": "cosine"})
    assert job["status"] == "succeeded", job
    result = job["result"]
    pruned = AutoModelForCausalLM.from_pretrained(result["model_path"])
    assert sum(p.numel() for p in pruned.parameters()) == result["params"]
    assert result["active_params"] < result["parent_active_params"] < result["parent_params"]
    assert describe(pruned).widths.num_moe_experts == spec["num_moe_experts"]
    assert torch.isfinite(exact.logits(pruned, BATCH)).all()


def test_a_search_space_can_aim_at_active_parameters():
    from hybridlab.search.space import SearchSpace, enumerate_candidates

    config, scores = MODELS["nemotron_h_moe"].config, SCORES["nemotron_h_moe"]
    target = int(estimate_sizes(config).active_params * 0.8)
    found = enumerate_candidates(config, scores, target, 0.1, SearchSpace(param_budget="active"), seq_len=64)
    assert found
    for candidate in found:
        sizes = estimate_sizes(config, candidate.spec, seq_len=64)
        assert candidate.params == sizes.active_params < sizes.params
        assert abs(candidate.params - target) <= 0.1 * target
