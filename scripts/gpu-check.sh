#!/usr/bin/env bash
# One short CUDA check (well under 10 minutes on one GPU; no network, no downloads): on a ~1B random-weight
# bf16 NemotronH, streamed and whole importance, a streamed prune, a short distillation and a paired bench,
# all with --device cuda, printing the same kind of ratios as the CPU benchmarks.
#
#   bash scripts/gpu-check.sh [WORKDIR]       # uses .venv if present, else python3 with torch (CUDA build)
#
# Until it has run on a GPU and its figures are in the README, the README says the CUDA path is untested.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WORK=${1:-/tmp/hybridlab-gpu-check}
rm -rf "$WORK" && mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 HYBRIDLAB_WORKSPACE="$WORK/ws"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)"

# a ~1.1B NemotronH: the 8B's pattern and head sizes at hidden 2048 with 24 layers
"$PY" - "$WORK/ck" <<'EOF'
import sys
from transformers import NemotronHConfig
from benchmarks.random_checkpoint import write_random_checkpoint
config = NemotronHConfig(
    vocab_size=131072, hidden_size=2048, hybrid_override_pattern="M-M-M-M*-M-M-M-M-M*-M-", intermediate_size=8192,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, mamba_num_heads=64, mamba_head_dim=64, n_groups=8,
    ssm_state_size=128, conv_kernel=4, tie_word_embeddings=False,
)
print(write_random_checkpoint(config, sys.argv[1], max_shard_bytes=512 * 1024**2))
EOF

H=("$PY" -m hybridlab)
CAL=(--calib assets/demo/calib.npy --samples 32 --seq-len 256 --device cuda)
t0=$(date +%s.%N)
"${H[@]}" importance --model "$WORK/ck" "${CAL[@]}" --layer-metric kl --layer-samples 8 --streaming --out "$WORK/s-streamed"
t1=$(date +%s.%N)
"${H[@]}" importance --model "$WORK/ck" "${CAL[@]}" --layer-metric kl --layer-samples 8 --no-streaming --out "$WORK/s-whole"
t2=$(date +%s.%N)
"$PY" - "$WORK" "$t0" "$t1" "$t2" <<'EOF'
import sys, torch
from hybridlab import ImportanceScores
work, t0, t1, t2 = sys.argv[1], *map(float, sys.argv[2:])
a, b = ImportanceScores.load(f"{work}/s-streamed"), ImportanceScores.load(f"{work}/s-whole")
same = all(torch.allclose(a.layers[m], b.layers[m], rtol=1e-3) for m in a.layers) and torch.allclose(a.hidden, b.hidden, rtol=1e-3)
print(f"importance on cuda: streamed {t1 - t0:.0f}s, whole {t2 - t1:.0f}s ({(t1 - t0) / (t2 - t1):.2f}x); scores agree: {same}")
EOF
"${H[@]}" prune --model "$WORK/ck" --scores "$WORK/s-streamed" --hidden-size 1536 --ffn-hidden-size 6144 --mamba-num-heads 48 \
  --streaming --device cuda --out "$WORK/pruned"
"${H[@]}" distill --student "$WORK/pruned" --teacher "$WORK/ck" --data assets/demo/train_sample.npy --val assets/demo/val.npy \
  --tokens 262144 --seq-len 256 --batch-size 8 --eval-every 64 --device cuda --out "$WORK/kd"
"${H[@]}" bench --model "$WORK/kd/model" --batch-size 1 --seq-len 1024 --new-tokens 32 --device cuda --json
"${H[@]}" bench --model "$WORK/ck" --batch-size 1 --seq-len 1024 --new-tokens 32 --device cuda --json
echo "gpu-check: done"
