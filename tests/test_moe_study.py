"""The study's experts-versus-expert-width comparison on tiny mixtures of experts: two arms at one budget,
exact parameter counts, and only for a teacher that has experts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hybridlab import PruneSpec, estimate_sizes, prune
from hybridlab.study.arms import (
    COMPARISONS,
    EXPERTS_VS_EXPERT_WIDTH,
    experts_vs_width_specs,
    params_of,
    plan_arms,
    wanted_comparisons,
)
from tests.families.tiny import tiny_config, tiny_model


@pytest.mark.parametrize("family", ["nemotron_h_moe", "granite_moe_hybrid_moe"])
def test_fewer_and_narrower_experts_meet_at_one_budget(family):
    config = tiny_config(family)
    fewer, narrower = experts_vs_width_specs(config, params_of(config, PruneSpec(num_moe_experts=4)))
    assert set(fewer.to_dict()) == {"num_moe_experts"} and set(narrower.to_dict()) == {"moe_ffn_hidden_size"}
    # 8 -> 4 experts and 16 -> 8 neurons remove the same routed weights; only the router rows differ
    assert fewer.num_moe_experts == 4 and narrower.moe_ffn_hidden_size == 8
    assert abs(params_of(config, fewer) - params_of(config, narrower)) <= 0.02 * params_of(config, fewer)
    model = tiny_model(family)
    for spec in (fewer, narrower):
        pruned = prune(model, spec, None, ranking="random")
        assert sum(p.numel() for p in pruned.parameters()) == params_of(config, spec)


def test_a_moe_teacher_gets_the_comparison_with_all_the_others_and_a_dense_one_does_not():
    moe, dense = tiny_config("nemotron_h_moe"), tiny_config("nemotron_h")
    assert EXPERTS_VS_EXPERT_WIDTH in wanted_comparisons(COMPARISONS, moe)
    assert EXPERTS_VS_EXPERT_WIDTH not in wanted_comparisons(COMPARISONS, dense)
    assert wanted_comparisons(("width_vs_depth",), moe) == {"width_vs_depth"}  # only what was asked for
    with pytest.raises(ValueError, match="needs a mixture-of-experts teacher"):
        experts_vs_width_specs(dense, 1000)


def test_plan_arms_of_the_expert_comparison_alone_prune_nothing_to_rank():
    teacher = tiny_model("nemotron_h_moe")
    settings = SimpleNamespace(comparisons=(EXPERTS_VS_EXPERT_WIDTH,))
    total = estimate_sizes(teacher.config).params

    def never(model):
        raise AssertionError("no width candidates are ranked for this comparison")

    arms, ranked, zero_shot, _ = plan_arms(teacher, None, int(0.8 * total), settings, never)
    assert [(a.comparison, a.arm) for a in arms] == [
        (EXPERTS_VS_EXPERT_WIDTH, "fewer experts"),
        (EXPERTS_VS_EXPERT_WIDTH, "narrower experts"),
    ]
    assert ranked.empty and not zero_shot
    assert arms[0].run_key != arms[1].run_key


def test_the_experts_comparison_on_a_dense_teacher_is_one_line_before_any_work(tmp_path):
    import numpy as np
    import torch

    from hybridlab.core.errors import UserError
    from hybridlab.study.run import StudySettings, run_study

    settings = StudySettings(comparisons=("experts_vs_expert_width",), seq_len=16, batch_size=2)
    tokens = np.arange(4096, dtype=np.uint16) % 100
    calib = torch.randint(0, 100, (4, 16))
    with pytest.raises(UserError, match="needs a mixture-of-experts teacher; this nemotron_h model"):
        run_study(tiny_model("nemotron_h"), None, tokens, tokens, calib, settings, tmp_path / "study")
    assert not (tmp_path / "study").exists()
