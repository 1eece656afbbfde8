"""Every family through every surface: the CLI (importance, plan, prune), a job, and every
dashboard page (AppTest) on a tiny random model saved to a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hybridlab import PruneSpec
from hybridlab.cli import main
from hybridlab.families import describe
from tests.families.tiny import TINY, tiny_model_folder

FAMILIES = sorted([*TINY, "nemotron_h"])
SILENT = lambda *args: None  # noqa: E731
MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def first_plan(config) -> dict:
    """A plan on every width axis the family has, which it can build (half of each, or close)."""
    from app.planner import preset_spec

    return preset_spec(config, "paper-like mix", 0.6).to_dict()


@pytest.fixture(scope="module", params=FAMILIES)
def lab(request, tmp_path_factory):
    """A family's tiny model folder and its importance scores, made by a real job."""
    from hybridlab.jobs import run_sync

    root = tmp_path_factory.mktemp(request.param)
    folder, calib = tiny_model_folder(request.param, root)
    patch = pytest.MonkeyPatch()
    patch.setenv("HYBRIDLAB_WORKSPACE", str(root / "workspace"))
    job = run_sync(
        "importance", {"model": str(folder), "calib": str(calib), "samples": 8, "seq_len": 32}, progress=SILENT
    )
    assert job["status"] == "succeeded", job
    yield dict(
        family=request.param,
        folder=folder,
        calib=calib,
        root=root,
        importance=job["result"]["run_id"],
        scores=str(root / "workspace" / job["result"]["artifact"]),
    )
    patch.undo()


def test_cli_importance_plan_and_prune(lab, capsys):
    folder, out = str(lab["folder"]), lab["root"] / "cli"
    argv = ["importance", "--model", folder, "--calib", str(lab["calib"]), "--samples", "8", "--seq-len", "32"]
    assert main([*argv, "--out", str(out / "scores")]) == 0
    config = AutoModelForCausalLM.from_pretrained(folder).config
    plan = first_plan(config)
    flags = [x for key, value in plan.items() for x in (f"--{key.replace('_', '-')}", str(value))]
    assert main(["plan", "--model", folder, *flags]) == 0
    assert main(["prune", "--model", folder, "--scores", str(out / "scores"), *flags, "--out", str(out / "small")]) == 0
    capsys.readouterr()
    small = AutoModelForCausalLM.from_pretrained(out / "small")
    assert describe(small).widths.num_layers == plan.get("num_layers", describe(config).widths.num_layers)
    assert sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters()
    )


def test_prune_job_writes_a_model_that_loads_generates_and_distils(lab):
    from hybridlab.jobs import run_sync

    plan = first_plan(AutoModelForCausalLM.from_pretrained(lab["folder"]).config)
    job = run_sync(
        "prune", {"model": str(lab["folder"]), "spec": plan, "importance": lab["importance"]}, progress=SILENT
    )
    assert job["status"] == "succeeded", job
    small = AutoModelForCausalLM.from_pretrained(job["result"]["model_path"]).eval()
    assert sum(p.numel() for p in small.parameters()) == job["result"]["params"]
    prompt = torch.randint(3, 128, (1, 6))
    assert small.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 9)
    tokens = str(lab["calib"])
    distill = dict(tokens=256, seq_len=16, batch_size=4, train_tokens=tokens, val_tokens=tokens)
    job = run_sync(
        "distill", {"student": f"job:{job['id']}", "teacher": str(lab["folder"]), **distill}, progress=SILENT
    )
    assert job["status"] == "succeeded", job  # and the student distils from its teacher


def test_search_ranks_candidates_the_family_can_build(lab):
    from hybridlab import ImportanceScores, prune
    from hybridlab.search.run import SearchSettings, search
    from hybridlab.search.space import SearchSpace
    from tests.test_distill import corpus

    model = AutoModelForCausalLM.from_pretrained(lab["folder"]).eval()
    settings = SearchSettings(
        target_params="70%",
        tolerance=0.1,
        max_candidates=3,
        top_k=0,
        distill_tokens=0,
        seq_len=16,
        eval_tokens=64,
        measure_latency=False,
        space=SearchSpace(max_depth_prune=0.3),
    )
    scores = ImportanceScores.load(lab["scores"])
    result = search(model, None, corpus(), corpus(500, seed=1), settings, scores=scores)
    assert 2 <= len(result.candidates) <= 4  # the teacher and up to 3 candidates, each pruned and evaluated
    assert sum(p.numel() for p in result.best_model.parameters()) < sum(p.numel() for p in model.parameters())
    assert prune(model, PruneSpec.from_dict(json.loads(result.best["spec"])), scores) is not None


def test_study_plans_are_ones_the_family_can_build(lab):
    from hybridlab import ImportanceScores, estimate_sizes, prune
    from hybridlab.study.arms import depth_only_spec, mamba_sweep_specs

    model = AutoModelForCausalLM.from_pretrained(lab["folder"]).eval()
    scores = ImportanceScores.load(lab["scores"])
    target = int(0.8 * estimate_sizes(model.config).params)
    for spec in (depth_only_spec(model.config, scores.layers["kl"], target), *mamba_sweep_specs(model.config, 0.5)):
        pruned = prune(model, spec, scores)
        assert sum(p.numel() for p in pruned.parameters()) == estimate_sizes(pruned.config).params


@pytest.mark.parametrize("page", ["model", "importance", "planner", "pareto", "distill", "jobs"])
def test_every_dashboard_page_renders(lab, page):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["model_ref"] = str(lab["folder"])
    at.session_state["scores_dir"] = lab["scores"]
    at.session_state["plan_spec"] = first_plan(AutoModelForCausalLM.from_pretrained(lab["folder"]).config)
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    if page == "planner":  # every control moved, one after the other, to its smallest offer: still a plan
        labels = [w.label for w in [*at.slider, *at.select_slider] if not w.label.startswith("target")]
        for label in labels:
            control = next(w for w in [*at.slider, *at.select_slider] if w.label == label)
            select = type(control).__name__ == "SelectSlider"
            control.set_value(int(control.options[0]) if select else control.min).run()
            assert not at.exception and not at.error, (label, [e.value for e in at.error])
        assert at.session_state["plan_spec"]  # a real plan, not "keep everything"
