"""docs/results.md from a finished study: the setup (what each seed changes, how intervals are made),
the measured table with 95% intervals, every paired comparison with its verdict, one paragraph per
finding and where the time went. Every number comes from the study's tables and summary; a verdict
is read from an interval (hybridlab.study.stats), never from a threshold on the point estimates."""

from __future__ import annotations

import math

import pandas as pd

from hybridlab.measure.paired import METHOD as LATENCY_METHOD
from hybridlab.study.arms import (
    EXPERTS_VS_EXPERT_WIDTH,
    FROM_SCRATCH,
    GROUP_VS_GLOBAL,
    HEADS_VS_CHANNELS,
    IMPORTANCE_VS_RANDOM,
    SSM_PRUNED_VS_WHOLE,
    WIDTH_VS_DEPTH,
)
from hybridlab.study.stats import METHOD

# what the paper found, per comparison: its claim, and the sign of (arm A - arm B) in distilled loss it implies
# (-1: A lower; 0: the two equal; None: the paper has no finding on it, its claim says so)
PAPER = {
    WIDTH_VS_DEPTH: ("Width-only versus depth-only", "width-only pruning beats depth-only at the same size", -1),
    HEADS_VS_CHANNELS: (
        "Mamba heads versus head channels",
        "cutting whole Mamba heads beats cutting head channels at the same SSM width, in loss and latency (Figure 7)",
        -1,
    ),
    GROUP_VS_GLOBAL: (
        "Group-aware versus global head ranking",
        "Mamba heads must be ranked within their groups, since a head moved to another group reads the wrong B and C",
        -1,
    ),
    SSM_PRUNED_VS_WHOLE: (
        "Pruning the SSM versus leaving it whole",
        "Table 1's candidates 1 (Mamba heads pruned) and 2 (SSM whole, more FFN pruned) reach the same loss, "
        "the first slightly faster",
        0,
    ),
    IMPORTANCE_VS_RANDOM: (
        "Importance ranking versus random",
        "activation importance chooses better units than chance",
        -1,
    ),
    EXPERTS_VS_EXPERT_WIDTH: (
        "Fewer routed experts versus narrower experts",
        "The paper has no mixture-of-experts finding: its models (Nemotron-H, Mamba2) have no routed experts, "
        "so it predicts neither fewer nor narrower experts to win at the same parameter count",
        None,
    ),
}


def loss(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def with_interval(row: dict, prefix: str) -> str:
    value = row.get(prefix)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    low, high = row.get(f"{prefix}_low"), row.get(f"{prefix}_high")
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return loss(value)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def speedup(row: dict, prefix: str = "speedup") -> str:
    """1.52x [1.41, 1.64]; no interval where it has none (one round, or the teacher itself)."""
    low, high = row[prefix + "_low"], row[prefix + "_high"]
    if low == high:
        return f"{row[prefix]:.2f}x"
    return f"{row[prefix]:.2f}x [{low:.2f}, {high:.2f}]"


def _faster(pair: dict) -> str:
    """Which arm prefills faster, read from the two speedup intervals (both paired with the teacher)."""
    a = speedup({k[:-2]: v for k, v in pair.items() if k.endswith("_a")})
    b = speedup({k[:-2]: v for k, v in pair.items() if k.endswith("_b")})
    if pair["speedup_low_a"] == pair["speedup_high_a"] or pair["speedup_low_b"] == pair["speedup_high_b"]:
        verdict = "no interval (one round), so no verdict"
    elif pair["speedup_low_a"] > pair["speedup_high_b"]:
        verdict = f"{pair['arm_a']} faster"
    elif pair["speedup_low_b"] > pair["speedup_high_a"]:
        verdict = f"{pair['arm_b']} faster"
    else:
        verdict = "the intervals overlap, no difference detected"
    return (
        f"Prefill speedup over the teacher: {pair['arm_a']} {a} ({pair['latency_ms_a']:.1f} ms), {pair['arm_b']} {b} "
        f"({pair['latency_ms_b']:.1f} ms): {verdict}."
    )


def render(
    results: pd.DataFrame,
    comparisons: pd.DataFrame,
    summary: dict,
    settings: dict,
    candidates: pd.DataFrame | None = None,
    per_seed: pd.DataFrame | None = None,
) -> str:
    rows = results.to_dict("records")
    by = {(r["comparison"], r["arm"]): r for r in rows}
    teacher = by[("reference", "teacher")]
    pairs = comparisons.to_dict("records")
    parts = [_header(summary, settings, teacher), _table(rows), _pairs_table(pairs)]
    if per_seed is not None and len(per_seed):
        parts.append(_seeds_table(per_seed))
    if candidates is not None and len(candidates):
        parts.append(_candidates(candidates))
    parts.append("## Findings\n")
    for comparison in PAPER:
        found = [p for p in pairs if p["comparison"] == comparison]
        if found:
            parts.append(_finding(comparison, found, by, summary))
    if summary.get("scratch"):
        parts.append(_from_scratch(summary, by))
    parts.append(_runtime(summary, settings, results, per_seed))
    return "\n".join(parts)


def _header(summary: dict, s: dict, teacher: dict) -> str:
    top_k = (
        f"the teacher's top-{s['teacher_top_k']} log-probabilities plus the mass of the rest of the vocabulary "
        "(cached once per seed, shared by every student of that seed)"
        if s.get("teacher_top_k")
        else "the live teacher's full logits"
    )
    model = "the demo teacher" if summary.get("model") in (None, "demo") else f"`{summary['model']}`"
    seeds = list(range(s["seed"], s["seed"] + s["seeds"]))
    pool, samples = summary.get("calibration_pool"), s["calib_samples"]
    calibration = (
        f"which {samples} of the {pool} calibration windows score the units (neurons, heads, channels) a student "
        f"keeps (drawn without replacement; the drop-one-layer KL, which only plans the depth arm, runs once, on "
        f"the first {min(s['layer_samples'], samples)} windows of the first seed)"
        if pool and pool > samples
        else f"nothing in the calibration: the pool has only {pool} windows, so every seed scores all of them"
    )
    return f"""# Results: the Minitron-SSM ablations on {model}

Generated by `hybridlab study` from its own measurements; do not edit by hand. The tables are
`results.csv` (arms), `results_comparisons.csv` (paired differences) and `results_curves.csv` (loss curves
per seed with min/max bands), next to this file. Regenerate everything with:

```
{summary.get("command") or "hybridlab study"}
```

**Setup.** Teacher: {summary["teacher_params"]:,} parameters, validation loss {loss(summary["teacher_loss"])}.
Target: remove {s["compression"]:.0%} of the parameters, i.e. {summary["target_params"]:,} parameters
(the width arms are within {s["tolerance"]:.0%} of it; depth-only is the closest layer count). The architectures are
planned once, from seed {seeds[0]}'s importance scores. Every arm is distilled for {s["tokens"]:,} tokens per seed
(batch {s["batch_size"]} x {s["seq_len"]}, learning rate {s["lr"]:g}, {"bf16 autocast" if s["bf16_autocast"] else "fp32"},
forward KL to {top_k}), drawn from a training sample of {summary["train_tokens_available"]:,} tokens. Losses are
next-token cross entropy in nats, fp32, on the same {summary["validation_windows"]} validation windows of
{s["seq_len"]} tokens for every model and seed.

**Seeds.** {len(seeds)} seeds per arm ({", ".join(map(str, seeds))}). A seed changes exactly three things:
{calibration}; the distillation batches (which training windows, in which order); and the random control's draw.
Validation windows, architectures, budgets and the from-scratch run are the same for every seed.

**Intervals.** Every loss and every difference is given as estimate [95% interval]: {METHOD}. A verdict says
"A better than B" only when the interval of A - B excludes 0, and otherwise "no difference detected at this
budget". Latency is the prefill of one sequence of {s["seq_len"]} tokens, once per distinct architecture, each
timed interleaved with the teacher (model then teacher, {s["latency_repeats"]} rounds after a warm-up round) on
this machine's CPU with {summary["torch_threads"]} torch thread(s): the median milliseconds, and the speedup over
the teacher with its 95% interval ({LATENCY_METHOD}).
"""


def _table(rows: list[dict]) -> str:
    lines = [
        "## Measured table\n",
        "Means over seeds and windows, with 95% intervals.\n",
        "| comparison | arm | spec | params | MFLOPs/token | zero-shot loss | distilled loss | scratch loss | prefill ms | speedup | tokens | seeds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['comparison']} | {r['arm']} | `{r['spec']}` | {int(r['params']):,} | {r['flops_per_token'] / 1e6:.2f} | "
            f"{with_interval(r, 'zero_shot_loss')} | {with_interval(r, 'distilled_loss')} | {loss(r['scratch_loss'])} | "
            f"{r['latency_ms']:.1f} | {speedup(r)} | {int(r['tokens']):,} | {int(r['seeds'])} |"
        )
    return "\n".join(lines) + "\n"


def _pairs_table(pairs: list[dict]) -> str:
    lines = [
        "## Paired comparisons\n",
        "A - B in nats (negative: A has the lower loss), paired by seed and validation window.\n",
        "| comparison | A | B | stage | A - B [95% interval] | verdict |",
        "|---|---|---|---|---:|---|",
    ]
    for p in pairs:
        lines.append(
            f"| {p['comparison']} | {p['arm_a']} | {p['arm_b']} | {p['stage'].replace('_', '-')} | "
            f"{p['difference']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}] | {p['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _seeds_table(per_seed: pd.DataFrame) -> str:
    frame = per_seed.drop_duplicates("run")[["run"]].merge(per_seed, on="run")
    seeds = sorted(frame["seed"].unique())
    lines = [
        "Distilled loss of each student per seed (students shared by several arms are listed once):\n",
        "| student | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---:|" * len(seeds),
    ]
    for run, group in frame.groupby("run", sort=False):
        values = dict(zip(group["seed"], group["distilled_loss"]))
        lines.append(f"| `{run}` | " + " | ".join(loss(values.get(s)) for s in seeds) + " |")
    return "\n".join(lines) + "\n"


def _candidates(frame: pd.DataFrame) -> str:
    lines = [
        "Width-only candidates at the target, ranked zero-shot with the first seed's scores (the best one is the "
        "width-only arm; the best with and without Mamba head pruning are the SSM arms):\n",
        "| candidate | params | prunes Mamba heads | zero-shot loss |",
        "|---|---:|---|---:|",
    ]
    for r in frame.to_dict("records"):
        lines.append(
            f"| `{r['spec']}` | {int(r['params']):,} | {'yes' if r['prunes_mamba_heads'] else 'no'} | {loss(r['zero_shot_loss'])} |"
        )
    return "\n".join(lines) + "\n"


def _outcome(expected: int | None, pair: dict) -> str:
    found = int(pair["direction"])
    interval = f"{pair['difference']:+.3f} [{pair['low']:+.3f}, {pair['high']:+.3f}]"
    if expected is None:
        return f"**Measured (no paper claim to test):** {pair['verdict']}."
    if expected == 0:
        if found == 0:
            return f"**Reproduced:** no difference detected at this budget ({pair['arm_a']} - {pair['arm_b']} = {interval} nats)."
        if found < 0:
            return f"**Reproduced, and more:** {pair['verdict']}."
        return f"**Does not reproduce at this scale:** {pair['verdict']}, where the paper found them equal."
    if found == expected:
        return f"**Reproduced:** {pair['verdict']}."
    if found == 0:
        return (
            f"**Not reproduced at this budget:** no difference detected ({pair['arm_a']} - {pair['arm_b']} = "
            f"{interval} nats); a difference of either sign inside that interval is not excluded."
        )
    return f"**Does not reproduce at this scale:** {pair['verdict']}, the opposite of the paper."


def _finding(comparison: str, pairs: list[dict], by: dict, summary: dict) -> str:
    title, claim, expected = PAPER[comparison]
    lines = [f"The paper found that {claim}." if expected is not None else f"{claim}."]
    if comparison == GROUP_VS_GLOBAL and summary.get("global_ranking_moved_heads") == 0:
        note = by[(comparison, pairs[0]["arm_b"])]["note"]
        lines.append(
            f"**Not testable on this teacher.** Both arms are the same model: {note}, so global ranking kept "
            "the same heads in the same groups."
        )
        return f"### {title}\n\n" + " ".join(lines) + "\n"
    distilled = [p for p in pairs if p["stage"] == "distilled"]
    zero_shot = {(p["arm_a"], p["arm_b"]): p for p in pairs if p["stage"] == "zero_shot"}
    for pair in distilled:
        a, b = by[(comparison, pair["arm_a"])], by[(comparison, pair["arm_b"])]
        before = zero_shot[(pair["arm_a"], pair["arm_b"])]
        lead = f"{pair['arm_a']} versus {pair['arm_b']}: " if len(distilled) > 1 else ""
        lines.append(
            f"{lead}{_outcome(expected, pair)} After distillation {pair['arm_a']} reached "
            f"{with_interval(a, 'distilled_loss')} and {pair['arm_b']} {with_interval(b, 'distilled_loss')}. "
            f"Zero-shot: {before['verdict']}. {_faster(pair)}"
        )
        notes = [f"{r['arm']}: {r['note']}" for r in (a, b) if r["note"]]
        if notes:
            lines.append("(" + "; ".join(notes) + ".)")
    return f"### {title}\n\n" + " ".join(line for line in lines if line) + "\n"


def _from_scratch(summary: dict, by: dict) -> str:
    s = summary["scratch"]
    row = by[(FROM_SCRATCH, "from scratch (random init)")]
    spec = row["spec"]
    if s["tokens_to_match"] is not None:
        ratio = s["tokens_to_match"] / s["distill_tokens"]
        verdict = (
            "**Reproduced.**"
            if ratio > 1
            else "**Does not reproduce at this scale:** from scratch was as fast or faster."
        )
        outcome = (
            f"{verdict} Its validation loss first reached the distilled students' "
            f"{loss(s['target_curve_loss'])} (their last curve point, mean over seeds) at {s['tokens_to_match']:,} tokens, "
            f"{ratio:.1f}x the {s['distill_tokens']:,} distillation tokens (checked every {s['eval_every_tokens']:,} tokens)."
        )
    else:
        outcome = (
            f"It did not reach the distilled students' {loss(s['target_curve_loss'])} (their last curve point, mean "
            f"over seeds) within {s['tokens']:,} tokens ({s['tokens'] / s['distill_tokens']:.1f}x the "
            f"{s['distill_tokens']:,} distillation tokens; its best was {loss(s['best_curve_loss'])}), so from-scratch "
            f"training needs more than {s['tokens'] / s['distill_tokens']:.1f}x the tokens here: **reproduced in "
            "direction, ratio only bounded below**."
        )
    pretraining = summary.get("teacher_pretraining_tokens")
    teacher_note = (
        f"The teacher itself was pretrained on {pretraining:,} tokens; counting them, a distilled student cost "
        f"{pretraining + s['distill_tokens']:,} tokens in all."
        if pretraining
        else "The teacher's pretraining tokens are not recorded with this model."
    )
    return (
        f"### Distillation versus training from scratch\n\nThe paper's compressed models needed far fewer tokens than "
        f"training their size from scratch. A randomly initialised model of the best distilled architecture `{spec}` was "
        f"trained with next-token loss on the same data (one run, seed {s.get('seed', 0)}) for {s['tokens']:,} tokens "
        f"(its loss went from {loss(s['initial_loss'])} to {loss(s['final_loss'])}). {outcome} Both curves are measured "
        f"the same way (the in-training evaluation on the curve windows), and one cosine schedule over the whole budget "
        f"is used, so the crossing point is an upper bound for a schedule tuned to end there. {teacher_note} The "
        f"comparison counts distillation tokens only, as the paper does: the teacher exists anyway, and its pretraining "
        f"is what the student inherits.\n"
    )


def _runtime(summary: dict, s: dict, results: pd.DataFrame, per_seed: pd.DataFrame | None) -> str:
    stages = summary.get("stages", {})
    total = summary["wall_s"]
    seeds = s["seeds"]
    lines = [
        "## Runtime\n",
        f"This pass of the command took {total / 60:.1f} minutes of wall time with {summary['torch_threads']} torch "
        f"thread(s). It trains {summary['distinct_students']} distinct students (arms that are the same model, e.g. "
        f"the width-only arm, the SSM-pruned mix, group-aware and importance ranking, share one) x {seeds} seeds = "
        f"{summary['distinct_students'] * seeds} distillations of {s['tokens']:,} tokens, from "
        f"{'a teacher-logits cache built once per seed' if s.get('teacher_top_k') else 'the live teacher'}, and times "
        f"{summary['distinct_architectures']} distinct architectures once each. Where the time went (CPU seconds count "
        "every thread; on a busy machine wall time also counts the waiting):\n",
        "| stage | wall s | CPU s |",
        "|---|---:|---:|",
    ]
    for name, t in stages.items():
        lines.append(f"| {name} | {t['wall_s']:.0f} | {t['cpu_s']:.0f} |")
    if per_seed is not None and len(per_seed):
        lines += [
            "",
            f"Of the distillation stage, the training loops themselves (steps and curve points, by the runs' own "
            f"clocks) took {summary.get('training_wall_s', 0) / 60:.1f} minutes. Wall seconds per student and seed "
            "(pruning, zero-shot scoring, distillation, final scoring; a resumed run counts its last attempt):\n",
            "| student | params | " + " | ".join(f"seed {seed}" for seed in sorted(per_seed["seed"].unique())) + " |",
            "|---|---:|" + "---:|" * per_seed["seed"].nunique(),
        ]
        params = dict(zip(results["run"], results["params"]))
        for run, group in per_seed.drop_duplicates(["run", "seed"]).groupby("run", sort=False):
            cells = " | ".join(f"{v:.0f}" for v in group.sort_values("seed")["wall_s"])
            lines.append(f"| `{run}` | {int(params[run]):,} | {cells} |")
    return "\n".join(lines) + "\n"
