"""Shared fixtures: tiny but real transformers models of both supported families."""

from __future__ import annotations

import os
import warnings

# One math thread per process, inherited by every subprocess the tests start (workers,
# torchrun ranks, the notebook kernel, streamlit): two pytest workers share two cores, and
# OpenMP threads that outnumber the cores spin-wait each other into crawling.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*falling back to its reference PyTorch implementation.*")
torch.set_num_threads(1)  # tests run two at a time on two cores


def tiny_nemotron_config(**overrides):
    from transformers import NemotronHConfig

    values = dict(
        vocab_size=128,
        hidden_size=32,
        hybrid_override_pattern="M-*M-M",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        mamba_num_heads=8,
        mamba_head_dim=4,
        n_groups=2,
        ssm_state_size=8,
        conv_kernel=4,
        chunk_size=8,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    values.update(overrides)
    return NemotronHConfig(**values)


def randomize(model, seed: int = 0):
    """Spread every weight so that pruning differences show up in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("A_log"):
                param.copy_(torch.rand(param.shape, generator=generator) * 2 - 1)
            elif name.endswith(("dt_bias", "D")) or "norm" in name:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


@pytest.fixture
def tiny_nemotron():
    from transformers import NemotronHForCausalLM

    torch.manual_seed(0)
    return randomize(NemotronHForCausalLM(tiny_nemotron_config()))


@pytest.fixture
def tiny_mamba2():
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    config = Mamba2Config(
        vocab_size=128,
        hidden_size=32,
        num_heads=8,
        head_dim=8,
        expand=2,
        n_groups=2,
        state_size=8,
        num_hidden_layers=3,
        chunk_size=8,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return randomize(Mamba2ForCausalLM(config))


@pytest.fixture
def token_batches():
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, 128, (4, 24), generator=generator) for _ in range(2)]


@pytest.fixture(scope="session", autouse=True)
def _session_workspace(tmp_path_factory):
    """Never the user's ~/.hybridlab or $HYBRIDLAB_WORKSPACE: CLI commands record their runs there."""
    path = str(tmp_path_factory.mktemp("workspace"))
    patch = pytest.MonkeyPatch()
    patch.setenv("HYBRIDLAB_WORKSPACE", path)
    yield path
    patch.undo()


@pytest.fixture(autouse=True)
def _own_workspace(_session_workspace, tmp_path_factory, monkeypatch):
    """Every test records its jobs in a fresh store, unless a module- or class-scoped fixture
    (set up before this one) chose a workspace for its tests to share."""
    if os.environ.get("HYBRIDLAB_WORKSPACE") == _session_workspace:
        monkeypatch.setenv("HYBRIDLAB_WORKSPACE", str(tmp_path_factory.mktemp("workspace")))
