"""The dashboard on mixtures of experts: a tiny random NemotronH with moe layers (and GraniteMoeHybrid with
experts for the plain helpers), importance by a real job in a real store, pages under Streamlit's AppTest.
The experts heatmap is layers x experts and crosses out exactly what kept_units drops; the planner's expert
controls change the spec and both parameter counts; a bad expert setting is one message."""

from __future__ import annotations

import pytest
import torch
from app_fixtures import tiny_moe_model_dir
from test_app import MAIN, SILENT, config_of, figures, metric, values

from hybridlab.compression.importance import MOE_EXPERT, MOE_NEURON

MOE_LAYERS = [1, 3, 6]  # tiny NemotronH MoE pattern "ME*EM-E"
EXPERTS = 8


@pytest.fixture(scope="module")
def moe_lab(tmp_path_factory):
    from hybridlab.jobs import run_sync

    root = tmp_path_factory.mktemp("moe-lab")
    model = tiny_moe_model_dir(root)
    workspace = root / "workspace"
    mp = pytest.MonkeyPatch()
    mp.setenv("HYBRIDLAB_WORKSPACE", str(workspace))
    imp = run_sync(
        "importance", {"model": model.ref, "calib": model.calib, "samples": 8, "seq_len": 32}, progress=SILENT
    )
    yield {"model": model, "workspace": workspace, "scores": str(workspace / imp["result"]["artifact"])}
    mp.undo()


def moe_app(lab, page: str, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["model_ref"] = lab["model"].ref
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def expert_figure(at):
    return next(f for f in figures(at) if f.layout.title.text.startswith("Routed experts"))


def crossed(figure) -> dict[str, set[int]]:
    """{layer label: crossed-out experts} of the experts heatmap."""
    out: dict[str, set[int]] = {}
    for trace in figure.data:
        if trace.name == "pruned by plan":
            for x, y in zip(values(trace.x), values(trace.y)):
                out.setdefault(y, set()).add(int(x))
    return out


def dropped_by_rule(lab, spec: dict, expert_metric: str) -> dict[str, set[int]]:
    from hybridlab import ImportanceScores, PruneSpec
    from hybridlab.compression.kept import kept_units

    scores = ImportanceScores.load(lab["scores"])
    kept = kept_units(scores, config_of(lab["model"].ref), PruneSpec.from_dict(spec), expert_metric=expert_metric)
    return {f"L{layer}": set(range(EXPERTS)) - set(kept.units(MOE_EXPERT, layer).tolist()) for layer in MOE_LAYERS}


def number_input(at, label: str):
    return next(n for n in at.number_input if n.label == label)


# ---- Importance: the experts heatmap -----------------------------------------------------------


def test_experts_heatmap_is_layers_by_experts_and_crosses_out_what_kept_units_drops(moe_lab):
    plan = {"num_moe_experts": 4}
    at = moe_app(moe_lab, "importance", scores_dir=moe_lab["scores"], plan_spec=plan)
    assert not at.error, [e.value for e in at.error]
    titles = [f.layout.title.text for f in figures(at)]
    assert titles[:2] == ["Routed experts: routing share", "Shared expert neurons"]  # the MoE tabs come first
    figure = expert_figure(at)
    z = torch.tensor(values(figure.data[0].z), dtype=torch.float64)
    assert z.shape == (len(MOE_LAYERS), EXPERTS)
    assert torch.allclose(z.sum(1), torch.ones(len(MOE_LAYERS), dtype=torch.float64))  # shares of each layer
    assert list(figure.data[0].y) == [f"L{layer}" for layer in MOE_LAYERS]
    assert [s["x0"] for s in figure.layout.shapes] == [3.5]  # the boundary between the 2 routing groups
    assert crossed(figure) == dropped_by_rule(moe_lab, plan, "routing_mass")

    at.radio[0].set_value("gated output norm").run()  # the toggle: the other metric colours and ranks
    assert not at.exception
    figure = expert_figure(at)
    assert figure.layout.title.text == "Routed experts: gated output norm"
    from hybridlab import ImportanceScores

    norms = ImportanceScores.load(moe_lab["scores"]).experts["gated_output_norm"]
    expected = torch.stack([norms[layer] for layer in MOE_LAYERS]).double()
    assert torch.allclose(torch.tensor(values(figure.data[0].z), dtype=torch.float64), expected)
    assert crossed(figure) == dropped_by_rule(moe_lab, plan, "gated_output_norm")
    assert at.session_state["expert_metric"] == "gated_output_norm"  # what the prune job will use


def test_overlay_marks_expert_neurons_of_kept_experts_only():
    """units_frame's MoE rows against kept_units, for both families: experts per metric, and expert
    neurons (flat index expert * F + neuron) kept only inside kept experts."""
    from app.overlay import units_frame
    from hybridlab import PruneSpec, estimate_importance
    from hybridlab.compression.kept import kept_units
    from tests.families.tiny import tiny_model

    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, 128, (4, 24), generator=generator) for _ in range(2)]
    for family in ("nemotron_h_moe", "granite_moe_hybrid_moe"):
        model = tiny_model(family)
        scores = estimate_importance(model, batches, layer_metric="kl")
        spec = PruneSpec(num_moe_experts=4, moe_ffn_hidden_size=8, moe_shared_expert_intermediate_size=16)
        for metric_name in ("routing_mass", "gated_output_norm"):
            frame = units_frame(scores, model.config, spec, expert_metric=metric_name)
            kept = kept_units(scores, model.config, spec, expert_metric=metric_name)
            width = kept.old.moe_ffn_hidden_size
            for layer, experts in kept.by_layer[MOE_EXPERT].items():
                rows = frame[frame.layer == layer]
                for axis in ("moe_expert_routing_mass", "moe_expert_gated_output_norm"):
                    part = rows[rows.axis == axis]
                    assert sorted(part.loc[part.kept, "index"]) == experts.tolist(), (family, layer, axis)
                neurons = rows[rows.axis == MOE_NEURON]
                expected = sorted(
                    int(e) * width + int(n)
                    for e, row in zip(experts, kept.units(MOE_NEURON, layer))
                    for n in row  # row i: the neurons kept expert i keeps
                )
                assert sorted(neurons.loc[neurons.kept, "index"]) == expected, (family, layer)
                shared = rows[rows.axis == "shared_expert_neuron"]
                assert sorted(shared.loc[shared.kept, "index"]) == kept.units("shared_expert_neuron", layer).tolist()


# ---- Prune planner ----------------------------------------------------------------------------------


def test_planner_expert_controls_change_the_spec_and_both_parameter_counts(moe_lab):
    from hybridlab import PruneSpec, estimate_sizes

    at = moe_app(moe_lab, "planner", scores_dir=moe_lab["scores"])
    config = config_of(moe_lab["model"].ref)
    full = estimate_sizes(config)
    assert full.active_params < full.params
    assert metric(at, "parameters") == f"{full.params / 1e6:,.3f} M"
    assert metric(at, "active parameters / token") == f"{full.active_params / 1e6:,.3f} M"
    assert {"routed experts", "expert width", "shared expert width"} <= {n.label for n in at.number_input}

    number_input(at, "routed experts").set_value(4).run()
    number_input(at, "expert width").set_value(8).run()
    number_input(at, "shared expert width").set_value(16).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    plan = {"num_moe_experts": 4, "moe_ffn_hidden_size": 8, "moe_shared_expert_intermediate_size": 16}
    assert at.session_state["plan_spec"] == plan
    spec = PruneSpec.from_dict(plan)
    pruned = estimate_sizes(config, spec)
    assert metric(at, "parameters") == f"{pruned.params / 1e6:,.3f} M"
    assert metric(at, "active parameters / token") == f"{pruned.active_params / 1e6:,.3f} M"
    flops_at = lambda s: estimate_sizes(config, s, seq_len=256).flops_per_token  # noqa: E731
    assert metric(at, "speedup (FLOP ratio)") == f"{flops_at(None) / flops_at(spec):.2f}x"
    # the plan's dropped experts are crossed out on the planner's own heatmap too
    assert crossed(expert_figure(at)) == dropped_by_rule(moe_lab, plan, "routing_mass")


@pytest.mark.parametrize(
    ("label", "value", "message"),
    [
        ("routed experts", 3, "num_moe_experts=3 keeps too few experts"),
        ("routed experts", 5, "num_moe_experts=5 is not a multiple of the router's 2 expert groups"),
        ("expert width", 12, "moe_ffn_hidden_size=12 is not a multiple of 8"),
    ],
)
def test_planner_bad_expert_setting_is_one_clear_message(moe_lab, label, value, message):
    at = moe_app(moe_lab, "planner", scores_dir=moe_lab["scores"])
    number_input(at, label).set_value(value).run()
    errors = [e.value for e in at.error]
    assert not at.exception
    assert len(errors) == 1 and errors[0].startswith("impossible plan: ") and message in errors[0], errors


def test_planner_prune_job_ranks_experts_by_the_chosen_score(moe_lab, monkeypatch):
    from hybridlab import jobs

    monkeypatch.setattr(jobs, "ensure_worker", lambda *a, **k: None)  # no worker: the jobs stay queued
    before = set(jobs.list_jobs()["id"])
    at = moe_app(moe_lab, "planner", scores_dir=moe_lab["scores"])
    number_input(at, "routed experts").set_value(6).run()
    at.radio[0].set_value("gated output norm").run()
    next(t for t in at.text_input if t.label == "validation tokens file (.npy)").input(moe_lab["model"].val)
    at.button(key="FormSubmitter:prune-Prune and evaluate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = [jobs.get_job(j) for j in sorted(set(jobs.list_jobs()["id"]) - before)]
    prune_job = next(j for j in new if j["kind"] == "prune")
    assert prune_job["spec"]["spec"] == {"num_moe_experts": 6}
    assert prune_job["spec"]["expert_metric"] == "gated_output_norm"
    for job in new:
        jobs.cancel(job["id"])


def test_planner_axes_of_both_moe_families():
    from app.planner import axes, params_per_unit, preset_spec
    from hybridlab import estimate_sizes
    from hybridlab.families import describe
    from tests.families.tiny import tiny_config

    nemotron = describe(tiny_config("nemotron_h_moe")).widths
    found = {a.key: (a.current, a.minimum, a.step) for a in axes(nemotron)}
    assert found["num_moe_experts"] == (8, 4, 2)  # 2 groups, a token picks 1 and its top 2 there: at least 4
    assert found["moe_ffn_hidden_size"][0] == 16 and found["moe_shared_expert_intermediate_size"][0] == 24
    granite = tiny_config("granite_moe_hybrid_moe")
    found = {a.key: (a.current, a.minimum, a.step) for a in axes(describe(granite).widths)}
    assert found["num_moe_experts"] == (8, 2, 1) and found["moe_shared_expert_intermediate_size"][0] == 96
    assert "routed experts" in params_per_unit(granite)
    config = tiny_config("nemotron_h_moe")
    spec = preset_spec(config, "width only", 0.5)  # presets narrow the expert axes with the others
    assert spec.num_moe_experts == 4 and spec.moe_ffn_hidden_size == 8
    assert estimate_sizes(config, spec).params < 0.5 * estimate_sizes(config).params
    dense = describe(tiny_config("granite_moe_hybrid")).widths
    assert not {"num_moe_experts", "moe_ffn_hidden_size"} & {a.key for a in axes(dense)}


def test_dense_model_planner_shows_no_expert_parts(moe_lab, tmp_path):
    """A dense model's planner and heatmaps are as before: no expert controls, metric or tabs."""
    from app_fixtures import tiny_model_dir

    dense = tiny_model_dir(tmp_path)
    at = moe_app({"model": dense}, "planner")
    assert not any(m.label.startswith("active") for m in at.metric)
    assert not {"routed experts", "expert width"} & {n.label for n in at.number_input}
    assert [m.label for m in at.metric] == ["parameters", "FLOPs / token", "inference state", "speedup (FLOP ratio)"]
    assert not any("Mixture of experts" in m.value for m in at.markdown)
