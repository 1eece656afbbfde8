"""The memory a command is estimated to need (hybridlab.model.memory) against what it really takes."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from transformers import NemotronHConfig

from benchmarks.random_checkpoint import write_random_checkpoint
from hybridlab import PruneSpec
from hybridlab.families import describe
from hybridlab.model.memory import memory_need
from hybridlab.model.sizes import count_params, planned_widths

# A small model whose pruning moves a few hundred MB: big enough that the measurement is not noise
SMALL = dict(
    vocab_size=32000, hidden_size=1024, hybrid_override_pattern="M-M*M-M-", intermediate_size=4096,
    num_attention_heads=8, num_key_value_heads=4, head_dim=128, mamba_num_heads=32, mamba_head_dim=64, n_groups=4,
    ssm_state_size=64, tie_word_embeddings=False,
)  # fmt: skip
SPEC = dict(hidden_size=768, ffn_hidden_size=3072, mamba_num_heads=24)
MEASURE = """
import json, shutil, sys
from hybridlab import PruneSpec
from hybridlab.compression.prune import prune_checkpoint
from hybridlab.model.streamed import StreamedModel

def status(key):  # kB in /proc/self/status -> bytes
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))

spec = PruneSpec(**json.loads(sys.argv[3]))
prune_checkpoint(StreamedModel(sys.argv[1]), spec, sys.argv[2] + "-warm", ranking="random")  # code pages in
shutil.rmtree(sys.argv[2] + "-warm")  # one pruned copy on disk at a time
source = StreamedModel(sys.argv[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to what is resident now
base = status("VmRSS")
prune_checkpoint(source, spec, sys.argv[2], ranking="random")
print(json.dumps({"base": base, "peak": status("VmHWM")}))
"""


@pytest.mark.slow
def test_streamed_prune_memory_estimate_is_within_20_percent_of_the_measured_peak(tmp_path):
    config = NemotronHConfig(**SMALL)
    weight_bytes = sum(count_params(describe(config).widths).values()) * 2
    if shutil.disk_usage(tmp_path).free < 2 * weight_bytes + 2**28:  # the checkpoint and its pruned copy
        pytest.skip(f"needs {(2 * weight_bytes + 2**28) / 2**20:.0f} MiB of free disk for its checkpoints")
    checkpoint = write_random_checkpoint(config, tmp_path / "model")
    # a clean environment: variables earlier tests left behind (e.g. debugging or allocator settings)
    # must not change what the measured process allocates
    env = {key: os.environ[key] for key in ("PATH", "HOME", "PYTHONPATH") if key in os.environ}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(checkpoint), str(tmp_path / "out"), json.dumps(SPEC)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    )
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    description = describe(config)
    need = memory_need(
        "prune", description, 2, streamed=True, tokens=0, pruned=planned_widths(description, PruneSpec(**SPEC))
    )
    taken = measured["peak"] - measured["base"]
    assert 0.8 <= taken / need.total <= 1.2, (taken, need.describe())
    print(f"streamed prune: measured {taken / 2**20:.0f} MiB, estimated {need.describe()}: {taken / need.total:.2f}x")
