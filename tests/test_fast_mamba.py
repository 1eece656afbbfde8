"""The fast CPU Mamba2 path (hybridlab.model.fast_mamba) against transformers' own PyTorch code: every
family's mixer, outputs and gradients in float32 within 1e-5 relative (largest difference over the
largest value), with group counts 1 < g < h, g = 1 and g = h, sequences that do not fill the last chunk,
left padding, a given initial state, cached prefill and single-token decoding. Timings live in
benchmarks/mamba_cpu.py, not here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hybridlab.model import fast_mamba
from hybridlab.model.fast_mamba import chunk_scan, fast_mixers, is_fast, use_fast_mamba
from tests.families.tiny import tiny_config, tiny_model

FAMILIES = ["nemotron_h", "mamba2", "bamba", "granite_moe_hybrid", "falcon_h1", "zamba2"]
TOLERANCE = 1e-5


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def _mixer_run(model, mixer, fast: bool, x, upstream, mask=None):
    """(output, input grad, {param: grad}) of one mixer forward + backward in training mode."""
    use_fast_mamba(model, fast)
    mixer.train()
    mixer.zero_grad()
    x = x.clone().requires_grad_()
    out = mixer(x, attention_mask=mask)
    (out * upstream).sum().backward()
    grads = {name: p.grad.clone() for name, p in mixer.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), grads


def _assert_mixer_exact(model, lengths=(37,), mask_padding: int = 0):
    mixers = fast_mixers(model)
    assert mixers, "no Mamba2 mixer found"
    generator = torch.Generator().manual_seed(0)
    for mixer in mixers:
        hidden = mixer.in_proj.in_features
        for length in lengths:
            x = torch.randn(2, length, hidden, generator=generator)
            upstream = torch.randn(2, length, hidden, generator=generator)
            mask = None
            if mask_padding:
                mask = torch.ones(2, length, dtype=torch.long)
                mask[1, :mask_padding] = 0  # left padding on the second row
            want = _mixer_run(model, mixer, False, x, upstream, mask)
            got = _mixer_run(model, mixer, True, x, upstream, mask)
            assert relative(got[0], want[0]) < TOLERANCE, f"output, length {length}"
            assert relative(got[1], want[1]) < TOLERANCE, f"input grad, length {length}"
            assert got[2].keys() == want[2].keys()
            for name in want[2]:
                assert relative(got[2][name], want[2][name]) < TOLERANCE, f"grad of {name}, length {length}"


@pytest.mark.parametrize("family", FAMILIES)
def test_mixer_outputs_and_gradients_equal_transformers(family):
    model = tiny_model(family)
    # 37 tokens: the last chunk is partly padding; one full chunk; a single token without cache
    _assert_mixer_exact(model, lengths=(37, tiny_config(family).to_dict().get("chunk_size") or 16, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_mask(family):
    _assert_mixer_exact(tiny_model(family), lengths=(37,), mask_padding=5)


@pytest.mark.parametrize(
    "groups",
    [1, 8],  # every head sharing one B/C, and one group per head (the tiny config itself has 2)
)
def test_group_counts(groups):
    _assert_mixer_exact(tiny_model("nemotron_h", n_groups=groups), lengths=(21,))


def test_falcon_h1_without_mixer_norm():
    _assert_mixer_exact(tiny_model("falcon_h1", mamba_rms_norm=False), lengths=(37,))


def _reference_scan():
    from transformers.models.nemotron_h import modeling_nemotron_h

    fn = modeling_nemotron_h.mamba2_chunk_scan
    return getattr(fn, "hybridlab_original", fn)


@pytest.mark.parametrize(
    "p, n",
    # the native kernels' vector code: head sizes 32 and 64, states of 8k (the backward) and even (the
    # forward); state 7 sends a head of 32 down the plain loops
    [(4, 5), (32, 16), (64, 32), (32, 12), (32, 7)],
)
def test_scan_with_initial_state_and_final_state(p, n):
    _assert_scan_matches_reference(
        p, n, b=2, length=45, h=6, g=3, dt_shift=-1.0, a_scale=4.0, chunk=16, dt_limit=(0.05, 2.0), seed=1
    )


@pytest.mark.parametrize("dt_shift", [-2.0, 1.0])  # weak decay; exp(dt A) under one half at most steps
def test_long_sequences_stay_within_float64(dt_shift):
    """600 tokens: three segments of the backward's replay, its restarts every 32 steps and at every
    strongly decaying step, against transformers' scan in float64."""
    _assert_scan_matches_reference(
        32, 16, b=1, length=600, h=4, g=2, dt_shift=dt_shift, a_scale=8.0, chunk=64, seed=2, reference=torch.float64
    )


def _assert_scan_matches_reference(
    p, n, *, b, length, h, g, dt_shift, a_scale, chunk, seed, dt_limit=(0.0, float("inf")), reference=torch.float32
):
    """chunk_scan in float32 against transformers' scan (in `reference` precision): y, the final state and
    the gradients of every input, initial state included, within 1e-5."""
    generator = torch.Generator().manual_seed(seed)
    values = [
        torch.randn(b, length, h, p, generator=generator),  # x
        torch.randn(b, length, h, generator=generator) + dt_shift,  # dt
        -torch.rand(h, generator=generator) * a_scale,  # A
        torch.randn(b, length, g, n, generator=generator),  # B
        torch.randn(b, length, g, n, generator=generator),  # C
        torch.randn(h, generator=generator),  # D
        torch.randn(h, generator=generator),  # dt_bias
        torch.randn(b, h, p, n, generator=generator),  # initial state
    ]
    up_y, up_state = torch.randn(b, length, h, p, generator=generator), torch.randn(b, h, p, n, generator=generator)
    results = []
    for fn, dtype in ((_reference_scan(), reference), (chunk_scan, torch.float32)):
        leaves = [v.to(dtype).requires_grad_() for v in values]
        x, dt, A, B, C, D, dt_bias, s0 = leaves
        y, final = fn(
            x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, initial_states=s0, dt_softplus=True,
            dt_limit=dt_limit, return_final_states=True,
        )  # fmt: skip
        ((y * up_y.to(dtype)).sum() + (final * up_state.to(dtype)).sum()).backward()
        results.append([y.detach(), final.detach()] + [leaf.grad for leaf in leaves])
    names = ["y", "final state", "x", "dt", "A", "B", "C", "D", "dt_bias", "initial state"]
    for name, got, want in zip(names, results[1], results[0]):
        assert relative(got, want) < TOLERANCE, name


@pytest.mark.parametrize(
    "family, overrides",
    [(family, {}) for family in FAMILIES] + [("falcon_h1", {"mamba_rms_norm": False})],  # z gates the decode step
)
def test_cached_prefill_and_decoding_equal_transformers(family, overrides, monkeypatch):
    calls = []
    for name, kernel in list(fast_mamba.FAST_KERNELS.items()):
        counted = lambda *a, _name=name, _kernel=kernel, **k: calls.append(_name) or _kernel(*a, **k)
        monkeypatch.setitem(fast_mamba.FAST_KERNELS, name, counted)
    model = tiny_model(family, **overrides)
    prompt = torch.randint(3, 128, (2, 19), generator=torch.Generator().manual_seed(2))
    runs = [_decode(model, prompt, fast) for fast in (False, True)]
    inference_kernels = set(fast_mamba.FAST_KERNELS) - {"mamba2_split_conv1d_scan_combined"}  # training's
    assert set(calls) == inference_kernels, "the fast run did not use every fast kernel"
    assert torch.equal(runs[1][1], runs[0][1])
    if family != "zamba2":
        assert relative(runs[1][0], runs[0][0]) < TOLERANCE
        return
    # Zamba2's random shared blocks amplify any float32 rounding difference layer by layer (its mixers
    # alone agree to 1e-7, see above), so transformers' own float32 logits lie ~1e-2 from its float64
    # ones here, and which float32 rounding lands nearer is chance: the fast path must stay within
    # twice transformers' float32 distance of the float64 logits
    exact = _decode(copy.deepcopy(model).double(), prompt, False, tokens=runs[0][1])[0].float()
    assert relative(runs[1][0], exact) < 2 * relative(runs[0][0], exact)


def _decode(model, prompt, fast: bool, steps: int = 6, tokens=None):
    """(logits [b, steps + 1, vocab] after the prompt and each cached decoding step, tokens [b, steps + 1]):
    greedy, or feeding the given tokens."""
    use_fast_mamba(model, fast)
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        logits, cache = [out.logits[:, -1]], out.past_key_values
        chosen = [out.logits[:, -1].argmax(-1, keepdim=True) if tokens is None else tokens[:, :1]]
        for i in range(steps):
            step = model(chosen[-1], cache=cache, use_cache=True)
            cache = step.past_key_values
            logits.append(step.logits[:, -1])
            chosen.append(step.logits[:, -1].argmax(-1, keepdim=True) if tokens is None else tokens[:, i + 1 : i + 2])
    return torch.stack(logits, 1), torch.cat(chosen, 1)


def test_decoding_step_uses_the_fast_kernel(monkeypatch):
    calls = []
    original = fast_mamba.FAST_KERNELS["mamba2_selective_state_update"]
    monkeypatch.setitem(
        fast_mamba.FAST_KERNELS, "mamba2_selective_state_update", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    model = tiny_model("mamba2")
    use_fast_mamba(model)
    with torch.no_grad():
        out = model(torch.tensor([[5, 6, 7]]), use_cache=True)
        model(torch.tensor([[8]]), cache=out.past_key_values, use_cache=True)
    assert calls, "a cached single-token step did not reach the fast decoding kernel"


def test_switch_off_and_deep_copies():
    model = tiny_model("nemotron_h")
    assert use_fast_mamba(model) == 3 and all(is_fast(m) for m in fast_mixers(model))
    twin = copy.deepcopy(model)  # e.g. a pruned copy: the switch travels with the module
    assert all(is_fast(m) for m in fast_mixers(twin))
    use_fast_mamba(model, enabled=False)
    assert not any(is_fast(m) for m in fast_mixers(model))
    assert all(is_fast(m) for m in fast_mixers(twin))


def test_load_model_turns_it_on_on_cpu(tmp_path, monkeypatch):
    from hybridlab.model.loading import load_model

    tiny_model("bamba").save_pretrained(tmp_path / "m")
    model, _ = load_model(tmp_path / "m")
    assert fast_mixers(model) and all(is_fast(m) for m in fast_mixers(model))
    monkeypatch.setenv(fast_mamba.ENV_SWITCH, "0")
    model, _ = load_model(tmp_path / "m")
    assert not any(is_fast(m) for m in fast_mixers(model))


def test_other_mixers_stay_untouched_on_cuda_tensors_and_outside_fast_mixers(monkeypatch):
    # a model that was not switched on runs the original even though its module's functions dispatch now
    fast_model, plain_model = tiny_model("nemotron_h"), tiny_model("nemotron_h")
    use_fast_mamba(fast_model)
    calls = []
    original = fast_mamba.FAST_KERNELS["mamba2_chunk_scan"]
    monkeypatch.setitem(
        fast_mamba.FAST_KERNELS, "mamba2_chunk_scan", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    from transformers.models.nemotron_h import modeling_nemotron_h

    dispatch = modeling_nemotron_h.mamba2_chunk_scan  # installed by use_fast_mamba above
    x = torch.randn(1, 8, 8, 4)
    args = (x, torch.randn(1, 8, 8), -torch.ones(8), torch.randn(1, 8, 2, 8), torch.randn(1, 8, 2, 8), 8)
    dispatch(*args)  # not inside a switched-on mixer
    assert not calls
    token = fast_mamba._inside_fast_mixer.set(True)
    try:
        dispatch(*args)
        assert calls == [1]
        assert not fast_mamba._applies("mamba2_chunk_scan", (x.to("meta"),) + args[1:], {})  # not a CPU tensor
    finally:
        fast_mamba._inside_fast_mixer.reset(token)
    with torch.no_grad():
        ids = torch.randint(3, 128, (1, 12))
        assert relative(plain_model(ids).logits, fast_model(ids).logits) < TOLERANCE


def _training_graph_nodes(prepare=lambda mixer: None, mask=None, backward: bool = False) -> set[str]:
    """The autograd node names of one training-mode mixer forward on the tiny NemotronH (after a
    backward through it with `backward`)."""
    from hybridlab.model import native

    if native.kernels() is None:
        pytest.skip("no C++ compiler here: the PyTorch path runs (tested below)")
    model = tiny_model("nemotron_h")
    use_fast_mamba(model)
    mixer = fast_mixers(model)[0]
    prepare(mixer)
    mixer.train()
    out = mixer(torch.randn(2, 9, mixer.in_proj.in_features, requires_grad=True), attention_mask=mask)
    if backward:
        out.sum().backward(retain_graph=True)
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


def test_native_kernels_are_used_when_built():
    # a training mixer runs everything after in_proj as one Function
    assert "NativeMixerTailBackward" in _training_graph_nodes()


class _DoubledLinear(torch.nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


def _doubled_out_proj(mixer):
    doubled = _DoubledLinear(
        mixer.out_proj.in_features, mixer.out_proj.out_features, bias=mixer.out_proj.bias is not None
    )
    doubled.load_state_dict(mixer.out_proj.state_dict())
    mixer.out_proj = doubled


@pytest.mark.parametrize(
    "customise",
    [
        lambda mixer, seen: mixer.norm.register_forward_hook(lambda *a: seen.append("norm forward hook")),
        lambda mixer, seen: mixer.out_proj.register_forward_pre_hook(lambda *a: seen.append("out_proj pre-hook")),
        lambda mixer, seen: mixer.out_proj.register_full_backward_hook(
            lambda *a: seen.append("out_proj backward hook")
        ),
        lambda mixer, seen: setattr(
            mixer.norm, "forward", lambda *a, _f=mixer.norm.forward: seen.append("instance forward") or _f(*a)
        ),
        lambda mixer, seen: _doubled_out_proj(mixer) or seen.append("subclass"),
    ],
    ids=["norm-hook", "out_proj-pre-hook", "backward-hook", "instance-forward", "linear-subclass"],
)
def test_a_customised_norm_or_out_proj_keeps_the_step_by_step_kernels(customise):
    # the fused path computes both without calling them, so anything that changes what calling them does
    # sends the mixer step by step, where it runs (and equals transformers, see the families above)
    seen = []
    names = _training_graph_nodes(lambda mixer: customise(mixer, seen), backward=True)
    assert seen, "the customisation did not run"
    assert "NativeMixerTailBackward" not in names
    assert {"NativeScanBackward", "NativeConvBackward", "NativeGatedNormBackward"} <= names


def test_a_global_module_hook_keeps_the_step_by_step_kernels():
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: seen.append(1))
    try:
        names = _training_graph_nodes()
    finally:
        handle.remove()
    assert seen and "NativeMixerTailBackward" not in names


def test_threads_sharing_a_model_keep_their_own_mixer_context():
    import threading

    model = tiny_model("nemotron_h")
    use_fast_mamba(model)
    model.eval()
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
    errors, outputs = [], []

    def work():
        try:
            with torch.no_grad():
                outputs.extend(model(ids, use_cache=False).logits for _ in range(8))
        except Exception as error:  # noqa: BLE001 - the test reports whatever a thread hit
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(outputs) == 24 and all(torch.equal(out, want) for out in outputs)


@pytest.mark.parametrize("masked_value", [0, 2])  # padding; any value the step-by-step path would multiply by
def test_a_mask_that_changes_anything_keeps_the_step_by_step_kernels(masked_value):
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = masked_value
    names = _training_graph_nodes(mask=mask)
    assert "NativeMixerTailBackward" not in names and "NativeScanBackward" in names
    assert "NativeMixerTailBackward" in _training_graph_nodes(mask=torch.ones(2, 9, dtype=torch.long))


@pytest.mark.parametrize("family", ["nemotron_h", "falcon_h1"])
def test_pytorch_fast_path_without_native_kernels(family, monkeypatch):
    # what runs where no compiler is available: the chunked PyTorch scan, transformers' convolution
    monkeypatch.setattr(fast_mamba, "_native", lambda: None)
    _assert_mixer_exact(tiny_model(family), lengths=(37,))


def test_failed_build_warns_once_and_falls_back(monkeypatch, caplog):
    from hybridlab.model import native

    def broken(verbose=False):
        raise RuntimeError("g++: command not found")

    monkeypatch.setattr(native, "build", broken)
    native.kernels.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=native.__name__):
            assert native.kernels() is None
            assert native.kernels() is None
        assert [r.getMessage() for r in caplog.records] == [
            "native Mamba2 kernels unavailable (g++: command not found); using the PyTorch fast path"
        ]
        _assert_mixer_exact(tiny_model("bamba"), lengths=(21,))
    finally:
        native.kernels.cache_clear()


def test_a_compiler_without_openmp_gets_the_serial_build(monkeypatch, tmp_path, caplog):
    from hybridlab.model import native

    probe = native._compiler_has_openmp
    monkeypatch.setenv("HYBRIDLAB_NATIVE_CACHE", str(tmp_path))  # nothing built yet
    builds = []
    monkeypatch.setattr(native, "_build", lambda threaded, verbose: builds.append(threaded) or "kernels")
    for has_openmp in (True, False):
        monkeypatch.setattr(native, "_compiler_has_openmp", lambda has_openmp=has_openmp: has_openmp)
        with caplog.at_level("WARNING", logger=native.__name__):
            assert native.build() == "kernels"
    assert builds == [True, False]
    assert [r.getMessage() for r in caplog.records] == [
        "the C++ compiler has no OpenMP: the native Mamba2 kernels will run on one thread"
    ]
    assert "-fopenmp" in native.variant(True)[1] and "-fopenmp-simd" in native.variant(False)[1]
    assert probe.__wrapped__() is True  # this machine's g++ has it


def test_the_build_is_named_by_every_source(monkeypatch, tmp_path):
    """A change to any file the build reads, the shared header too, names a new build: an older,
    still-cached one never loads after an edit."""
    import shutil

    from hybridlab.model import native

    for path in native.sources():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(native, "FOLDER", tmp_path)
    names = {path.name for path in native.sources()}
    assert {"kernels.h", "bindings.cpp", "scan.cpp"} <= names
    before = native._tag(True)
    header = tmp_path / "kernels.h"
    header.write_text(header.read_text() + "\n// an edit\n")
    assert native._tag(True) != before


def test_every_source_compiles_without_avx2():
    """The "generic" variant (a CPU without AVX2 and FMA, ARM) compiles each kernel's plain loops alone."""
    import concurrent.futures
    import os
    import shutil
    import subprocess

    from torch.utils import cpp_extension

    from hybridlab.model import native

    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        pytest.skip("no C++ compiler")
    includes = [flag for path in cpp_extension.include_paths() for flag in ("-isystem", path)]
    flags = [flag for flag in native.variant(False)[1] if not flag.startswith("-m") and flag != "-O3"]

    def check(path):
        command = [compiler, "-std=c++20", "-fsyntax-only", *flags, *includes, str(path)]
        return path.name, subprocess.run(command, capture_output=True, text=True, timeout=300)

    kernels = [path for path in native.sources() if path.suffix == ".cpp" and path.name != "bindings.cpp"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for name, run in pool.map(check, kernels):
            assert run.returncode == 0, f"{name}: {run.stderr[-2000:]}"


def test_a_build_killed_midway_does_not_block_the_next_one(tmp_path):
    """cpp_extension marks a build in progress with a lock file, which a killed build (Ctrl-C, a
    cancelled job) leaves behind: the next process must build or load, not wait for it forever."""
    import os
    import shutil
    import subprocess
    import sys

    from hybridlab.model import native

    if native.kernels() is None:
        pytest.skip("the native kernels do not build here")
    built = native.cache_dir() / native._tag(native._built(True) or native._compiler_has_openmp())
    shutil.copytree(built, tmp_path / built.name)
    (tmp_path / built.name / "lock").touch()  # what the killed build left
    code = "from hybridlab.model import native; print(native._build(True, False).__name__)"
    env = {**os.environ, "HYBRIDLAB_NATIVE_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert run.stdout.strip() == f"hybridlab_mamba_cpu_{built.name}", run.stderr[-2000:]


def test_native_conv_backward_of_no_rows():
    from hybridlab.model import native

    kernels = native.kernels()
    if kernels is None:
        pytest.skip("no C++ compiler here")
    x, weight, bias = torch.randn(0, 5, 16), torch.randn(16, 4), torch.randn(16)
    dx, dweight, dbias = kernels.conv_backward(x, weight, bias, torch.randn(0, 5, 16), torch.empty(0), torch.empty(0))
    assert dx.shape == (0, 5, 16) and not dweight.any() and not dbias.any()


@pytest.mark.parametrize(
    "length, channels, taps, bias",
    # vector channels and a scalar tail; sequences shorter than the taps (both paths); runs of 64 rows
    # and a partial one (both paths); 2 and 4 taps; no bias
    [(37, 64, 4, True), (3, 13, 4, True), (2, 16, 4, True), (130, 21, 2, False), (130, 24, 4, True), (64, 8, 4, False)],
)
def test_native_conv_equals_pytorch(length, channels, taps, bias):
    from hybridlab.model import native

    kernels = native.kernels()
    if kernels is None:
        pytest.skip("no C++ compiler here")
    generator = torch.Generator().manual_seed(3)
    wide = torch.randn(2, length, channels + 5, generator=generator)
    weight = torch.randn(channels, taps, generator=generator)
    b = torch.randn(channels, generator=generator) if bias else None
    upstream = torch.randn(2, length, channels, generator=generator)

    x = wide[..., 2 : 2 + channels].clone().requires_grad_()  # the kernels read a strided view of it
    w, bb = weight.clone().requires_grad_(), None if b is None else b.clone().requires_grad_()
    want = F.silu(F.conv1d(x.transpose(1, 2), w.unsqueeze(1), bb, padding=taps - 1, groups=channels)[..., :length])
    (want.transpose(1, 2) * upstream).sum().backward()

    view = wide[..., 2 : 2 + channels]
    none = torch.empty(0)
    slope = torch.empty(2, length, channels)
    got = kernels.conv_forward(view, weight, none if b is None else b, none, slope)
    assert relative(got, want.transpose(1, 2)) < TOLERANCE
    assert torch.equal(got, kernels.conv_forward(view, weight, none if b is None else b, none, none))
    for kept in (slope, none):  # the backward from the slope the forward kept, and recomputing it
        dx, dweight, dbias = kernels.conv_backward(view, weight, none if b is None else b, upstream, none, kept)
        assert relative(dx, x.grad) < TOLERANCE
        assert relative(dweight, w.grad) < TOLERANCE
        if bias:
            assert relative(dbias, bb.grad) < TOLERANCE
    with pytest.raises(RuntimeError, match="slope"):
        kernels.conv_backward(view, weight, none if b is None else b, upstream, none, slope[:, 1:])


def test_a_mixer_gradient_someone_keeps_is_never_overwritten():
    """The fused backward reuses the buffer of the gradient it returned last time only when nothing
    holds it: a gradient a hook kept stays as it was through later backwards."""
    model = tiny_model("nemotron_h")
    use_fast_mamba(model, True)
    mixer = fast_mixers(model)[0].train()
    kept = []
    handle = mixer.in_proj.register_full_backward_hook(lambda module, grad_in, grad_out: kept.append(grad_out[0]))
    generator = torch.Generator().manual_seed(0)
    snapshots = []
    for _ in range(3):
        x = torch.randn(2, 11, mixer.in_proj.in_features, generator=generator, requires_grad=True)
        mixer(x).pow(2).sum().backward()
        snapshots.append(kept[-1].clone())
    handle.remove()
    assert len(kept) == 3 and len({t.data_ptr() for t in kept}) == 3
    for got, want in zip(kept, snapshots):
        assert torch.equal(got, want)
    addresses = []  # without a keeper the buffer comes back
    handle = mixer.in_proj.register_full_backward_hook(
        lambda module, grad_in, grad_out: addresses.append(grad_out[0].data_ptr())
    )
    for _ in range(3):
        x = torch.randn(2, 11, mixer.in_proj.in_features, generator=generator, requires_grad=True)
        mixer(x).pow(2).sum().backward()
    handle.remove()
    from hybridlab.model.native import functions

    pool = functions._recycled_buffers.__dict__["d_zxbcdt"]
    assert addresses[1] == addresses[2] in {t.data_ptr() for t in pool}  # (a fresh block could land there too)


def test_forwards_whose_backward_is_pending_keep_their_own_activations():
    """Two training forwards before one backward (gradient accumulation over a graph, or 8 layers of
    one model): the second must not take the buffers the first saved. Their gradients equal the two
    computed one after the other."""
    model = tiny_model("nemotron_h")
    use_fast_mamba(model, True)
    mixer = fast_mixers(model)[0].train()
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 21, mixer.in_proj.in_features, generator=generator) for _ in range(2)]

    def grads(together: bool):
        leaves = [x.clone().requires_grad_() for x in inputs]
        mixer.zero_grad()
        if together:
            outputs = [mixer(x) for x in leaves]
            (outputs[0].pow(2).sum() + outputs[1].sum()).backward()
        else:
            mixer(leaves[0]).pow(2).sum().backward()
            mixer(leaves[1]).sum().backward()
        return [x.grad for x in leaves] + [p.grad.clone() for p in mixer.parameters() if p.grad is not None]

    for got, want in zip(grads(True), grads(False)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_training_mixer_run_under_inference_mode_leaves_later_training_steps_working():
    """A train-mode mixer called under torch.inference_mode (an evaluation that forgot model.eval())
    must not leave inference tensors in the recycled buffers: autograd refuses to save those, so every
    later training step of that shape would fail."""
    from hybridlab.model.native import functions

    model = tiny_model("nemotron_h")
    use_fast_mamba(model, True)
    mixer = fast_mixers(model)[0].train()
    width = mixer.in_proj.in_features
    length = 23  # a shape no other test's buffers have: the pool has nothing free of it yet
    with torch.inference_mode():
        mixer(torch.randn(2, length, width))
    assert not any(t.is_inference() for pool in functions._recycled_buffers.__dict__.values() for t in pool)
    x = torch.randn(2, length, width, requires_grad=True)
    mixer(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_an_empty_sequence_passes_the_final_states_gradient_to_the_initial_state():
    """With no token the final state is the initial state: dL/ds0 = dL/dfinal, as transformers gives."""
    generator = torch.Generator().manual_seed(4)
    b, h, p, g, n = 2, 4, 32, 2, 16
    x, dt = torch.randn(b, 0, h, p), torch.rand(b, 0, h)
    A, B, C = -torch.rand(h), torch.randn(b, 0, g, n), torch.randn(b, 0, g, n)
    s0 = torch.randn(b, h, p, n, generator=generator).requires_grad_()
    upstream = torch.randn(b, h, p, n, generator=generator)
    y, final = chunk_scan(x, dt, A, B, C, 16, initial_states=s0, return_final_states=True)
    (final * upstream).sum().backward()
    assert y.shape == (b, 0, h, p) and torch.equal(final.detach(), s0.detach())
    assert torch.equal(s0.grad, upstream)


@pytest.mark.parametrize("group_size", [16, 12])  # whole AVX2 vectors per group, and the general loops
def test_native_gated_norm_equals_pytorch(group_size):
    from hybridlab.model import native

    kernels = native.kernels()
    if kernels is None:
        pytest.skip("no C++ compiler here")
    generator = torch.Generator().manual_seed(5)
    rows, d = 7, 3 * group_size
    wide = torch.randn(rows, d + 9, generator=generator) * 3
    y = torch.randn(rows, d, generator=generator)
    weight = torch.randn(d, generator=generator)
    upstream = torch.randn(rows, d, generator=generator)

    leaves = [t.clone().requires_grad_() for t in (y, wide[:, 4 : 4 + d], weight)]
    v = (leaves[0] * F.silu(leaves[1])).view(rows, -1, group_size)
    want = (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5)).view(rows, d) * leaves[2]
    (want * upstream).sum().backward()

    z = wide[:, 4 : 4 + d]  # the kernels read a strided view of it
    none = torch.empty(0)
    got, rstd = kernels.gated_norm_forward(y, z, weight, group_size, 1e-5, none)
    assert relative(got, want) < TOLERANCE
    dy, dz, dweight = kernels.gated_norm_backward(y, z, weight, rstd, upstream, group_size, none, none)
    for mine, theirs in zip((dy, dz, dweight), leaves):
        assert relative(mine, theirs.grad) < TOLERANCE


@pytest.mark.parametrize("heads", [16, 13])  # whole AVX2 vectors, and a scalar tail
@pytest.mark.parametrize("limits", [(0.0, float("inf")), (0.05, 2.0)])
def test_native_time_step_equals_pytorch(heads, limits):
    """clamp(softplus(dt_in + bias)) and its gradients as transformers computes them, read from a
    strided slice of the projection and written into one, across softplus's linear threshold (20)."""
    from hybridlab.model import native

    kernels = native.kernels()
    if kernels is None:
        pytest.skip("no C++ compiler here")
    generator = torch.Generator().manual_seed(6)
    b, L = 3, 37
    projection = torch.randn(b, L, heads + 11, generator=generator) * 8  # spans -30 .. 30 after the bias
    projection[0, 0, 5 : 5 + heads] = torch.linspace(-90, 40, heads)  # exp underflows, and overflows unguarded
    bias = torch.randn(heads, generator=generator) * 2
    upstream = torch.randn(b, L, heads, generator=generator)

    leaves = [projection[..., 5 : 5 + heads].clone().requires_grad_(), bias.clone().requires_grad_()]
    want = torch.clamp(F.softplus(leaves[0] + leaves[1]), *limits)
    (want * upstream).sum().backward()

    dt_in = projection[..., 5 : 5 + heads]  # a view with row strides, as the mixer's
    got = kernels.time_step_forward(dt_in, bias, *limits)
    assert got.is_contiguous() and relative(got, want) < 1e-6
    gradient = torch.full((b, L, heads + 11), 7.0)
    d_bias = kernels.time_step_backward(dt_in, bias, *limits, upstream, gradient[..., 5 : 5 + heads])
    assert relative(gradient[..., 5 : 5 + heads], leaves[0].grad) < 1e-6
    assert relative(d_bias, leaves[1].grad) < TOLERANCE
    assert (gradient[..., :5] == 7).all() and (gradient[..., 5 + heads :] == 7).all()  # nothing else written
    clipped = (F.softplus(dt_in + bias) < limits[0]) | (F.softplus(dt_in + bias) > limits[1])
    assert limits[1] == float("inf") or clipped.any()  # the limits case clips somewhere
    assert (gradient[..., 5 : 5 + heads][clipped] == 0).all()
