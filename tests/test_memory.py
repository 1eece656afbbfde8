"""The memory a command is estimated to need (hybridlab.model.memory) against what it really takes."""

import json
import subprocess
import sys

import pytest
from transformers import NemotronHConfig

from benchmarks.random_checkpoint import write_random_checkpoint
from hybridlab import PruneSpec
from hybridlab.families import describe
from hybridlab.model.memory import memory_need
from hybridlab.model.sizes import planned_widths

# A small model whose pruning moves a few hundred MB: big enough that the measurement is not noise
SMALL = dict(
    vocab_size=32000, hidden_size=1024, hybrid_override_pattern="M-M*M-M-", intermediate_size=4096,
    num_attention_heads=8, num_key_value_heads=4, head_dim=128, mamba_num_heads=32, mamba_head_dim=64, n_groups=4,
    ssm_state_size=64, tie_word_embeddings=False,
)  # fmt: skip
SPEC = dict(hidden_size=768, ffn_hidden_size=3072, mamba_num_heads=24)
MEASURE = """
import json, resource, sys
from hybridlab import PruneSpec
from hybridlab.compression.prune import prune_checkpoint
from hybridlab.model.streamed import StreamedModel

source = StreamedModel(sys.argv[1])
base = int(open("/proc/self/statm").read().split()[1]) * 4096  # resident bytes before pruning
prune_checkpoint(source, PruneSpec(**json.loads(sys.argv[3])), sys.argv[2], ranking="random")
print(json.dumps({"base": base, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


@pytest.mark.slow
def test_streamed_prune_memory_estimate_is_within_20_percent_of_the_measured_peak(tmp_path):
    config = NemotronHConfig(**SMALL)
    checkpoint = write_random_checkpoint(config, tmp_path / "model")
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(checkpoint), str(tmp_path / "out"), json.dumps(SPEC)],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    description = describe(config)
    need = memory_need(
        "prune", description, 2, streamed=True, tokens=0, pruned=planned_widths(description, PruneSpec(**SPEC))
    )
    taken = measured["peak"] - measured["base"]
    assert 0.8 <= taken / need.total <= 1.2, (taken, need.describe())
