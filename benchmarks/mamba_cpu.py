"""The fast CPU Mamba2 path (hybridlab.use_fast_mamba) against plain transformers on the demo teacher.

One model is switched between the two paths, each measurement alternating fast and plain rounds
(medians, so drift in the shared machine's load affects both alike). Prints the ratio plain / fast
for: one Mamba mixer forward + backward (batch x seq tokens, training mode), a whole training step
(forward, backward, AdamW step, without a cache as training loops ask; once with only the Mamba path
switched, once as a plain transformers
loop against hybridlab's trainer, which also computes the loss with its native cross-entropy and
uses the fused AdamW), a no-grad prefill, cached decoding (tokens/s, one token at a time
after a prompt) and importance estimation on calibration windows. Issue 14's goals, on the 2-core CPU
with 2 threads at batch 8 x 256: training step >= 1.6x, mixer >= 2.5x.

For the mixer and the training step it also counts each arm's minor page faults and the CPU time the
kernel spent on the process per call: the plain path faults fresh pages in for its temporaries on every
call, and what a fault costs on a shared VM changes from minute to minute, which is most of its drift
between runs. It also times a third arm whose scan, convolution and gated-norm
kernels return zeros at once: plain / free is the most that any kernel for those parts could give, since
the projections, MLPs, attention, loss and optimizer are the same work in both paths.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from benchmarks._common import interleaved_medians, teacher_model
from hybridlab import estimate_importance, use_fast_mamba
from hybridlab.model import fast_mamba, native
from hybridlab.model.fast_mamba import fast_mixers

_native_kernels = fast_mamba._native

CLOCK = {"wall": None, "cpu": time.process_time}
MIXER_ROUNDS = 4  # times --repeats for the mixer alone
_clock = None  # set by main: None = wall clock through _common.interleaved_medians


def _medians(fns, repeats: int, settle: int = 0) -> dict[str, float]:
    """Interleaved medians, each timed call after `settle` untimed ones of the same arm; with --clock
    cpu in this process's CPU seconds, which other processes on a shared machine disturb far less
    than wall time (meaningful with --threads 1)."""
    if _clock is None:
        return interleaved_medians(fns, torch.device("cpu"), repeats, settle=settle)
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(settle):
                fn()
            begin = _clock()
            fn()
            times[name].append(_clock() - begin)
    return {name: statistics.median(values) for name, values in times.items()}


class _FreeKernels:
    """Stand-ins for the native kernels that return zeros of the right shapes at once. A step through
    them bounds what any scan, convolution, time-step and gated-norm kernel could reach: the rest of the step
    (the projections, MLPs, attention, loss and optimizer) is the same work in every path."""

    def scan_forward(self, x, dt, A, B, C, D, s0, y_out):
        b, _, h, p = x.shape
        return (
            y_out.zero_() if y_out.numel() > 0 else torch.zeros_like(x),
            x.new_zeros(b, h, p, B.shape[3]),
            x.new_empty(b, h, -(-x.shape[1] // 256), B.shape[3], p),
        )

    def scan_backward(self, x, dt, A, B, C, D, entering, dy, dfinal, dx_out, dB_out, dC_out):
        b, _, h, p = x.shape
        zeros = x.new_zeros(b, h)
        given = dx_out.numel() > 0
        return (
            dx_out.zero_() if given else torch.zeros_like(x),
            torch.zeros_like(dt),
            zeros,
            dB_out.zero_() if given else torch.zeros_like(B),
            dC_out.zero_() if given else torch.zeros_like(C),
            zeros,
            x.new_zeros(b, h, p, B.shape[3]),
        )

    def conv_forward(self, x, weight, bias, out, slope_out):
        return out.zero_() if out.numel() > 0 else torch.zeros_like(x)

    def conv_backward(self, x, weight, bias, dout, dx_out, slope):
        dx = dx_out.zero_() if dx_out.numel() > 0 else torch.zeros_like(x)
        return dx, torch.zeros_like(weight), weight.new_zeros(weight.shape[0])

    def time_step_forward(self, dt_in, bias, lo, hi):
        return dt_in.new_zeros(dt_in.shape)

    def time_step_backward(self, dt_in, bias, lo, hi, ddt, d_in):
        d_in.zero_()
        return bias.new_zeros(bias.shape)

    def gated_norm_forward(self, y, z, weight, group_size, eps, out):
        normed = out.zero_() if out.numel() > 0 else torch.zeros_like(y)
        return normed, y.new_zeros(y.shape[0], y.shape[1] // group_size)

    def gated_norm_backward(self, y, z, weight, rstd, dout, group_size, dz_out, dy_out):
        dz = dz_out.zero_() if dz_out.numel() > 0 else torch.zeros_like(y)
        dy = dy_out.zero_() if dy_out.numel() > 0 else torch.zeros_like(y)
        return dy, dz, torch.zeros_like(weight)


def _switch(model, fast: bool) -> None:
    """use_fast_mamba(model, fast) where the model is on the other path: switching walks every module
    (~1 ms), which a training loop does once, not every step; the untimed settle call before each timed
    one switches, so the timed call runs the step alone."""
    mixers = fast_mixers(model)
    if not mixers or fast_mamba.is_fast(mixers[0]) != fast:
        use_fast_mamba(model, fast)


def _both(model, fn, pytorch_fast: bool = False, free: bool = False):
    """{"plain": ..., "fast": ...} callables that switch the model's path, then run fn; with
    pytorch_fast also "pytorch": the fast path without the native kernels (what runs where no
    compiler is available); with free also "free": the fast path with _FreeKernels (the bound)."""

    def run(fast, kernels=_native_kernels):
        def call():
            _switch(model, fast)
            fast_mamba._native = kernels
            try:
                return fn()
            finally:
                fast_mamba._native = _native_kernels

        return call

    arms = {"plain": run(False), "fast": run(True)}
    if pytorch_fast:
        arms["pytorch"] = run(True, lambda: None)
    if free and _native_kernels() is not None:
        free_kernels = _FreeKernels()
        arms["free"] = run(True, lambda: free_kernels)
    return arms


def _counted(fns: dict) -> tuple[dict, dict]:
    """fns wrapped to count, per call, the process's minor page faults and the CPU seconds the kernel
    spent on it (resource.getrusage, all threads), and the {name: [calls, faults, seconds]} they add to."""
    counts = {name: [0, 0, 0.0] for name in fns}

    def wrap(name, fn):
        def call():
            before = resource.getrusage(resource.RUSAGE_SELF)
            try:
                return fn()
            finally:
                after = resource.getrusage(resource.RUSAGE_SELF)
                count = counts[name]
                count[0] += 1
                count[1] += after.ru_minflt - before.ru_minflt
                count[2] += after.ru_stime - before.ru_stime

        return call

    return {name: wrap(name, fn) for name, fn in fns.items()}, counts


def _report(
    name: str, medians: dict[str, float], unit_count: float | None = None, unit: str = "", counts: dict | None = None
) -> float:
    ratio = medians["plain"] / medians["fast"]
    rates = ""
    if unit_count:
        rates = f"  ({unit_count / medians['plain']:.0f} vs {unit_count / medians['fast']:.0f} {unit})"
    print(
        f"{name:<28} plain {medians['plain'] * 1000:9.1f} ms   fast {medians['fast'] * 1000:9.1f} ms   "
        f"ratio {ratio:5.2f}x{rates}",
        flush=True,
    )
    if "free" in medians:
        print(
            f"{'':<28} free kernels {medians['free'] * 1000:9.1f} ms: no scan, convolution, time-step or gated-norm kernel "
            f"can beat {medians['plain'] / medians['free']:.2f}x here",
            flush=True,
        )
    if counts:
        per_call = {
            arm: (faults / max(calls, 1), seconds / max(calls, 1)) for arm, (calls, faults, seconds) in counts.items()
        }
        print(
            f"{'':<28} a call's page faults (CPU time in the kernel): "
            + ", ".join(f"{arm} {faults:.0f} ({seconds * 1000:.1f} ms)" for arm, (faults, seconds) in per_call.items()),
            flush=True,
        )
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--settle",
        type=int,
        default=1,
        help="untimed calls before each timed one of the mixer, step and prefill arms (each timed warm, as a loop runs it)",
    )
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--importance-windows", type=int, default=16)
    parser.add_argument("--throughput-threads", default="1,2", help="thread counts for --throughput")
    parser.add_argument("--throughput-batches", default="8,16", help="batch sizes for --throughput")
    parser.add_argument("--throughput-precisions", default="float32,bf16", help="float32 and/or bf16 (autocast)")
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall", help="cpu: process CPU time")
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="instead: training tokens/s per thread count, batch and precision: plain, fast, fast without native kernels",
    )
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCK[args.clock]
    if args.throughput:
        return throughput(args)

    torch.set_num_threads(args.threads)
    model, what = teacher_model()
    mixers = fast_mixers(model)
    if not mixers:
        print(f"{what}: no Mamba2 mixer the fast path supports")
        return 1
    b, t = args.batch_size, args.seq_len
    print(
        f"{what}, {len(mixers)} Mamba mixers, batch {b} x {t}, {args.threads} threads, {args.repeats} rounds "
        f"(the mixer {MIXER_ROUNDS}x as many: its arms take ~0.1 s and vary more; each after {args.settle} untimed), "
        f"{args.clock} clock, fast path: {_kernels_in_use()}"
    )
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (b, t), generator=torch.Generator().manual_seed(0))
    ratios = {}

    mixer = mixers[0]
    hidden = torch.randn(b, t, mixer.in_proj.in_features, requires_grad=True)

    def mixer_step():
        mixer.train()
        mixer(hidden).sum().backward()

    arms, counts = _counted(_both(model, mixer_step, free=True))
    ratios["mixer"] = _report("mixer fwd+bwd", _medians(arms, args.repeats * MIXER_ROUNDS, args.settle), counts=counts)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        model(ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()

    arms, counts = _counted(_both(model, train_step, free=True))
    ratios["train"] = _report("training step", _medians(arms, args.repeats, args.settle), b * t, "tok/s", counts=counts)
    ratios["trainer"] = _report(
        "step as hybridlab trains",
        _medians(_trainer_steps(model, ids), args.repeats, args.settle),
        b * t,
        "tok/s",
    )
    model.eval()

    def prefill():
        with torch.no_grad():
            model(ids, use_cache=False)

    ratios["prefill"] = _report(
        "prefill (no grad)",
        _medians(_both(model, prefill), args.repeats, args.settle),
        b * t,
        "tok/s",
    )

    prompt = ids[:1, :64]

    def decode():
        with torch.no_grad():
            out = model(prompt, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(args.decode_tokens):
                out = model(token, cache=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)

    ratios["decode"] = _report(
        "cached decoding (64 + steps)",
        _medians(_both(model, decode), max(2, args.repeats // 2)),
        args.decode_tokens,
        "tok/s",
    )

    calib = torch.randint(3, vocab, (args.importance_windows, t), generator=torch.Generator().manual_seed(1))

    def importance():
        # a no-op progress callback: tqdm's bars would interleave with the table
        estimate_importance(model, list(calib.split(b)), layer_metric=None, progress=lambda *_: None)

    ratios["importance"] = _report(
        "importance estimation",
        _medians(_both(model, importance), max(2, args.repeats // 2)),
    )
    use_fast_mamba(model)
    print(
        "goals: training step >= 1.6x: "
        + ("met" if ratios["train"] >= 1.6 else "NOT met")
        + f" ({ratios['train']:.2f}x from the Mamba path; {ratios['trainer']:.2f}x as hybridlab trains); "
        + "mixer >= 2.5x: "
        + ("met" if ratios["mixer"] >= 2.5 else "NOT met")
        + f" ({ratios['mixer']:.2f}x)"
    )
    return 0


def _trainer_steps(model, ids) -> dict:
    """A training step the way a plain transformers loop takes it (transformers' mixer, the loss from
    `labels=`, PyTorch's default AdamW) against the step hybridlab's trainer takes (the fast path,
    next_token_loss, fused AdamW). Both clip
    the gradient norm to 1, as both trainers do by default, and update the same model at lr 1e-7."""
    from hybridlab.training.trainer import TrainerSettings, make_optimizer, next_token_loss

    plain_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
    hybridlab_optimizer = make_optimizer(model, TrainerSettings(total_steps=1, lr=1e-7))

    def transformers_step():
        _switch(model, False)
        model.train()
        plain_optimizer.zero_grad(set_to_none=True)
        model(ids, labels=ids, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        plain_optimizer.step()

    def hybridlab_step():
        _switch(model, True)
        model.train()
        hybridlab_optimizer.zero_grad(set_to_none=True)
        next_token_loss(model(ids, use_cache=False).logits, ids).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        hybridlab_optimizer.step()

    return {"plain": transformers_step, "fast": hybridlab_step}


def _kernels_in_use() -> str:
    if native.kernels() is None:
        return "PyTorch (native kernels unavailable)"
    return f"native kernels ({native.variant()[0]})"


def throughput(args) -> int:
    """Training-step tokens/s of the demo teacher for choosing a training run's settings."""
    model, what = teacher_model()
    print(
        f"{what}: training step tokens/s (AdamW), seq {args.seq_len}, {args.repeats} rounds, plain vs fast "
        f"({_kernels_in_use()}) vs the fast path's PyTorch kernels"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
    model.train()
    for threads in [int(n) for n in args.throughput_threads.split(",")]:
        torch.set_num_threads(threads)
        for batch in [int(n) for n in args.throughput_batches.split(",")]:
            ids = torch.randint(
                3, model.config.vocab_size, (batch, args.seq_len), generator=torch.Generator().manual_seed(0)
            )
            for precision in args.throughput_precisions.split(","):

                def step(ids=ids, precision=precision):
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32"):  # "bf16"
                        loss = model(ids, labels=ids, use_cache=False).loss
                    loss.backward()
                    optimizer.step()

                medians = _medians(_both(model, step, pytorch_fast=True), args.repeats)
                tokens = batch * args.seq_len
                print(
                    f"threads {threads}  batch {batch:2d} x {args.seq_len}  {precision:<8}  "
                    f"plain {tokens / medians['plain']:6.0f} tok/s   fast {tokens / medians['fast']:6.0f} tok/s   "
                    f"(PyTorch kernels {tokens / medians['pytorch']:6.0f} tok/s)   "
                    f"ratio {medians['plain'] / medians['fast']:.2f}x",
                    flush=True,
                )
    use_fast_mamba(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
