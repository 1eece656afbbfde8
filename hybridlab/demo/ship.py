"""`hybridlab data ship`: copy a finished training run into assets/demo/ with its model card.

The teacher is stored in bfloat16 (half the bytes; the repository stays small) and every number in the
model card is measured on exactly the shipped weights, loaded back in float32: on the whole validation
split of the corpus it was trained on, and on the first demo corpus' validation split (`val_v1.npy`, kept
beside it when a new corpus replaces `val.npy`) so a new teacher compares honestly with the old one. The
card states the run's whole schedule, one line per segment of its run record.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from hybridlab.core.atomic import atomic_directory, write_text
from hybridlab.core.paths import DEMO_TEACHER, DEMO_VAL, demo_dir
from hybridlab.core.progress import ProgressFn
from hybridlab.data.build import copy_for_shipping
from hybridlab.data.tokens import contiguous_windows, load_tokens, sha256_file, unigram_entropy
from hybridlab.demo.load import CARD_SEQ_LEN, CARD_SUBSET_WINDOWS, load_demo
from hybridlab.training.run_record import schedule_summary

VAL_V1 = "val_v1.npy"  # the first demo corpus' validation split (2 packages): where the 4.60 was measured

SAMPLE_PROMPTS = ["The kernel", "To create a new list in Python,", "This driver supports"]


def ship_demo(
    run_dir: str | Path,
    corpus_dir: str | Path,
    dest: str | Path | None = None,
    notes: str = "",
    progress: ProgressFn | None = None,
) -> dict:
    """Copy the run's final model (as bf16), val/calib tokens, data card and metrics to `dest`; write the card.

    `notes` is added to the card's training section verbatim (e.g. how the run was interrupted/resumed).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hybridlab.training.pretrain import validation_loss

    run_dir, corpus_dir = Path(run_dir), Path(corpus_dir)
    dest = Path(dest) if dest else demo_dir()
    for needed in (run_dir / "model" / "config.json", run_dir / "summary.json", corpus_dir / "val.npy"):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} missing: finish `hybridlab train` / `hybridlab data build` first")
    report = progress or (lambda f, m, x=None: print(f"[{f:4.0%}] {m}", flush=True))
    dest.mkdir(parents=True, exist_ok=True)
    keep_first_validation_split(dest, corpus_dir)
    report(0.0, "writing the bfloat16 teacher", None)
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"), local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "model"), local_files_only=True)
    with atomic_directory(dest / DEMO_TEACHER, overwrite=True) as tmp:
        model.to(torch.bfloat16).save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    copy_for_shipping(corpus_dir, dest)
    for name in ("metrics.jsonl", "run.json", "summary.json"):
        shutil.copyfile(run_dir / name, dest / f"train_{name}")

    report(0.3, "measuring the shipped teacher", None)
    demo = load_demo(root=dest)
    facts = measure(demo, validation_loss)
    facts["layer_pattern"] = demo.model.config.hybrid_override_pattern  # e.g. "M-M-M-M*-M-M-M-M-"
    facts["val_unigram_entropy"] = unigram_entropy(load_tokens(dest / DEMO_VAL), len(tokenizer))
    if (dest / VAL_V1).exists():
        v1 = contiguous_windows(load_tokens(dest / VAL_V1), CARD_SEQ_LEN)
        facts["val_v1_loss"] = validation_loss(demo.model, v1)
        facts["val_v1_windows"] = len(v1)
        facts["val_v1_sha256"] = sha256_file(dest / VAL_V1)
    report(0.8, "sampling", None)
    facts["samples"] = samples(demo.model, demo.tokenizer)
    facts["notes"] = notes
    (dest / "teacher_eval.json").write_text(json.dumps(facts, indent=2) + "\n")
    write_model_card(dest, facts)
    report(1.0, f"shipped to {dest}", None)
    return facts


def keep_first_validation_split(dest: Path, corpus_dir: Path) -> None:
    """Before a new corpus' val.npy replaces the shipped one, keep the first corpus' split as val_v1.npy
    (once: later ships keep comparing against the same tokens)."""
    shipped = dest / DEMO_VAL
    if (dest / VAL_V1).exists() or not shipped.exists():
        return
    if sha256_file(shipped) != sha256_file(corpus_dir / "val.npy"):
        shutil.copyfile(shipped, dest / VAL_V1)


def measure(demo, validation_loss) -> dict:
    """Validation loss in float32 on the shipped weights: the card's subset and the whole split."""
    torch.manual_seed(0)
    subset = validation_loss(demo.model, demo.val_windows(CARD_SEQ_LEN, CARD_SUBSET_WINDOWS))
    full = validation_loss(demo.model, demo.val_windows(CARD_SEQ_LEN))
    n_full = len(demo.val_windows(CARD_SEQ_LEN))
    return {
        "subset_windows": CARD_SUBSET_WINDOWS,
        "seq_len": CARD_SEQ_LEN,
        "subset_val_loss": subset,
        "subset_val_perplexity": math.exp(subset),
        "full_windows": n_full,
        "full_tokens_predicted": n_full * (CARD_SEQ_LEN - 1),
        "val_loss": full,
        "val_perplexity": math.exp(full),
    }


def samples(model, tokenizer, max_new_tokens: int = 60) -> list[dict]:
    out = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        torch.manual_seed(i)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(
                ids,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=0.8,
                top_k=50,
                pad_token_id=tokenizer.pad_token_id,
            )
        out.append({"prompt": prompt, "seed": i, "text": tokenizer.decode(gen[0], skip_special_tokens=False)})
    return out


def write_model_card(dest: Path, facts: dict) -> None:
    run = json.loads((dest / "train_run.json").read_text())
    summary = json.loads((dest / "train_summary.json").read_text())
    corpus = json.loads((dest / "corpus.json").read_text())
    cfg, st = run["config"], run["settings"]
    sources = corpus["sources"]
    data_line = "; ".join(f"{s['package']} ({s['license']})" for s in sources)
    segments = run.get("segments", [])
    schedule = "\n".join(schedule_summary(segments)) if segments else "One uninterrupted segment (no run record)."
    machines = sorted({s["machine"]["cpu"] or s["machine"]["host"] for s in segments}) or ["a shared 2-core CPU"]
    threads = sorted({str(s["threads"]) for s in segments}) or [str(st.get("threads") or "default")]
    torches = sorted({s["torch"] for s in segments}) or [run["torch"]]
    fast = sorted({"on" if s["fast_mamba"] else "off" for s in segments}) or ["off"]
    v1_row = (
        f"| validation loss, first demo corpus' validation split (`{VAL_V1}`, {facts['val_v1_windows']} windows × "
        f"{facts['seq_len']}; the previous teacher scored 4.6043 here) | **{facts['val_v1_loss']:.4f}** nats/token |\n"
        if "val_v1_loss" in facts
        else ""
    )
    evals = [json.loads(line) for line in (dest / "train_metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    curve = " → ".join(f"{e['val_loss']:.2f}" for e in evals[:: max(1, len(evals) // 8)])
    bf16 = st.get("bf16_autocast", True)  # runs before the setting trained under bf16 autocast
    precision = "bf16 autocast" if bf16 else "float32"
    checked = (
        f"{st['eval_windows']} windows spread over the split"
        if st.get("eval_spread")
        else f"the split's first {st['eval_windows']} windows (its first documents, not a sample of it)"
    )
    pattern = facts["layer_pattern"]
    sample_text = "\n\n".join(
        f"**Prompt** `{s['prompt']}` (seed {s['seed']}):\n\n```text\n{s['text']}\n```" for s in facts["samples"]
    )
    card = f"""# Model card: hybridlab demo teacher

A mini **Nemotron-H** (`NemotronHForCausalLM`) trained from scratch on CPU by `hybridlab train`, shipped so that
importance estimation, pruning and distillation have a genuinely trained hybrid model to work on offline.
Load it with `hybridlab.load_demo()`, `--model demo`, or
`AutoModelForCausalLM.from_pretrained("assets/demo/teacher", dtype=torch.float32)`.

## Architecture

| | |
|---|---|
| layer pattern | `{pattern}` ({len(pattern)} layers: M = Mamba2, - = ReLU² MLP, * = GQA attention) |
| parameters | {run["parameters"]:,} |
| hidden size | {cfg["hidden_size"]} |
| Mamba2 | {cfg["mamba_num_heads"]} heads × head dim {cfg["mamba_head_dim"]}, n_groups {cfg["n_groups"]}, state {cfg["ssm_state_size"]}, conv {cfg["conv_kernel"]}, chunk {cfg["chunk_size"]} |
| MLP | intermediate {cfg["intermediate_size"]}, ReLU² |
| attention | {cfg["num_attention_heads"]} query heads / {cfg["num_key_value_heads"]} KV heads, head dim {cfg["head_dim"]} |
| vocabulary | {cfg["vocab_size"]:,} (byte-level BPE, see DATA_CARD.md) |
| stored as | bfloat16 safetensors (all numbers below are measured after loading it back in float32) |

## Quality (validation split, never trained on)

| measure | value |
|---|---:|
| validation loss, whole split ({facts["full_windows"]} windows × {facts["seq_len"]}, {facts["full_tokens_predicted"]:,} predicted tokens) | **{facts["val_loss"]:.4f}** nats/token |
| validation perplexity, whole split | **{facts["val_perplexity"]:.2f}** |
{v1_row}| unigram entropy of the validation tokens (best context-free model) | {facts["val_unigram_entropy"]:.4f} nats/token |
| validation loss, test subset (first {facts["subset_windows"]} windows × {facts["seq_len"]}, float32, batch 8) | {facts["subset_val_loss"]:.4f} |
| perplexity, test subset | {facts["subset_val_perplexity"]:.2f} |

`tests/test_demo.py` recomputes the subset loss from the shipped files and checks it against this card (tolerance 1e-3).

Validation loss during training, a quick check on {checked} (the whole-split loss above is the measure), {precision}:
{curve}

## Training

| | |
|---|---|
| data | demo corpus, train split ({corpus["tokens"]["train"]:,} tokens from {len(sources)} Debian documentation packages, see DATA_CARD.md): {data_line} |
| tokens seen | {summary["tokens_seen"]:,} ({summary["steps"]:,} steps × batch {st["batch_size"]} × {st["seq_len"]} tokens) |
| optimiser | AdamW (β = 0.9, 0.95), lr {st["lr"]}, weight decay {st["weight_decay"]}, {st["warmup_steps"]} warm-up steps, cosine to {st["min_lr_ratio"]} × lr, grad clip {st["grad_clip"]} |
| precision | {"bf16 autocast, fp32 master weights" if bf16 else "float32"} |
| seed | {st["seed"]} |
| wall time | {summary["wall_s"] / 60:.1f} min in {max(1, len(segments))} segment(s) on {", ".join(machines)} ({"/".join(threads)} torch thread(s)), torch {", ".join(torches)}, fast Mamba path {"/".join(fast)} |
| data hashes (sha256) | train.npy `{run["data"]["train.npy"][:16]}…`, val.npy `{run["data"]["val.npy"][:16]}…`, tokenizer `{run["data"]["tokenizer/tokenizer.json"][:16]}…` |

**Schedule record** (every start, stop and resume, from the run record):

{schedule}

{facts.get("notes", "")}

The full configuration, settings, hashes and segments are in `train_run.json`; the loss curve is
`train_metrics.jsonl`. Reproduce with `hybridlab data build --out data/corpus --tokenizer assets/demo/teacher`,
then `hybridlab train --data data/corpus --out runs/demo-teacher --tokens {st["token_budget"]}` (stop and
resume at will: `--resume` on the same machine, or `hybridlab snapshot` + `--resume-weights` on another), then
`hybridlab data ship --run runs/demo-teacher --data data/corpus`.

## Samples (temperature 0.8, top-k 50)

{sample_text}

## Limits

A {run["parameters"] / 1e6:.1f}M-parameter model trained on CPU on {len(sources)} software manuals: it writes text that
looks like technical documentation but is not factual, and it knows nothing outside those manuals. It exists
to exercise compression code, not to be used for anything else. The weights are derived from text under
these licences: {", ".join(sorted({s["license"] for s in sources}))}.
"""
    write_text(dest / "MODEL_CARD.md", card)
