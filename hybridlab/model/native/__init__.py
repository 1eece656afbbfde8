"""The native CPU kernels (the .cpp files here, one per kernel family, and kernels.h), compiled once
with torch.utils.cpp_extension.

`kernels()` returns the compiled module, or None when it cannot be had (no compiler, a failed build,
HYBRIDLAB_NATIVE_MAMBA=0); then one warning line is logged and hybridlab.model.fast_mamba keeps its
PyTorch path. The build goes to HYBRIDLAB_NATIVE_CACHE, by default .cache/hybridlab-native/ in the
checkout (git-ignored; ~/.cache/hybridlab-native when the package is installed elsewhere), one folder
per instruction-set variant and source hash: "avx2" (-mavx2 -mfma) only where this CPU reports both flags, else
"generic" (SSE2), so a cache copied to another CPU never runs instructions it lacks.
`python -m hybridlab.model.native build` compiles it ahead of time (scripts/setup.sh does).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

from hybridlab.core.hardware import cpu_flags

log = logging.getLogger(__name__)

ENV_SWITCH = "HYBRIDLAB_NATIVE_MAMBA"  # "0": never build or use the native kernels
FOLDER = Path(__file__).parent


def sources() -> list[Path]:
    """The files the build compiles (.cpp) and includes (.h), in a fixed order."""
    return sorted([*FOLDER.glob("*.cpp"), *FOLDER.glob("*.h")])


def cpu_has_avx2() -> bool:
    return {"avx2", "fma"} <= set(cpu_flags())


def variant(threaded: bool = True) -> tuple[str, list[str]]:
    """(name, compiler flags) for this CPU. -fopenmp: without it ATen's parallel_for, an inline
    template, compiles to a serial loop (the kernels then ignore torch's thread count); the build
    links the libgomp that torch has already loaded, so both share one thread pool. A compiler
    without OpenMP (Apple's clang) gets the serial build (threaded=False)."""
    base = ["-O3", "-fopenmp" if threaded else "-fopenmp-simd"]
    if cpu_has_avx2():
        return "avx2", base + ["-mavx2", "-mfma"]
    return "generic", base


def cache_dir() -> Path:
    if os.environ.get("HYBRIDLAB_NATIVE_CACHE"):
        return Path(os.environ["HYBRIDLAB_NATIVE_CACHE"])
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").exists() and os.access(root, os.W_OK):
        return root / ".cache" / "hybridlab-native"
    return Path.home() / ".cache" / "hybridlab-native"


def switched_on() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def build(verbose: bool = False):
    """Compile (or load the cached build of) the kernels: threaded, or serial where the compiler has
    no OpenMP (Apple's clang). Raises when the build fails."""
    threaded = _built(threaded=True) or _compiler_has_openmp()
    if not threaded:
        log.warning("the C++ compiler has no OpenMP: the native Mamba2 kernels will run on one thread")
    return _build(threaded, verbose)


def _tag(threaded: bool) -> str:
    import torch

    name, flags = variant(threaded)
    # source, flags and torch name the build: a change never loads an older, still-cached build
    stamp = " ".join([*flags, torch.__version__]).encode()
    digest = hashlib.sha256(stamp)
    for path in sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{name}_{digest.hexdigest()[:12]}"


def _built(threaded: bool) -> bool:
    tag = _tag(threaded)
    return any((cache_dir() / tag).glob(f"hybridlab_mamba_cpu_{tag}*.so"))


@functools.cache
def _compiler_has_openmp() -> bool:
    """Whether the compiler cpp_extension uses ($CXX, else c++) builds an OpenMP program."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "probe.cpp"
        source.write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        command = [os.environ.get("CXX", "c++"), "-fopenmp", str(source), "-o", str(Path(folder) / "probe")]
        try:
            return subprocess.run(command, capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False  # no compiler at all: the build below says so


def _build(threaded: bool, verbose: bool):
    from torch.utils import cpp_extension

    tag = _tag(threaded)
    folder = cache_dir() / tag
    folder.mkdir(parents=True, exist_ok=True)
    with _only_builder(folder):
        return cpp_extension.load(
            name=f"hybridlab_mamba_cpu_{tag}",
            sources=[str(path) for path in sources() if path.suffix == ".cpp"],
            extra_cflags=variant(threaded)[1],
            extra_ldflags=["-fopenmp"] if threaded else [],
            build_directory=str(folder),
            verbose=verbose,
        )


@contextlib.contextmanager
def _only_builder(folder: Path):
    """Hold an OS lock on the build folder while building. cpp_extension's own lock is a file that
    a build killed midway (Ctrl-C, a cancelled job) leaves behind, and every later process then waits
    for it forever; the OS lock dies with its process, so holding it means that file is stale."""
    try:
        import fcntl
    except ImportError:  # Windows: cpp_extension's lock alone
        yield
        return
    with open(folder / "hybridlab.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another process building waits here, and is then loaded
        (folder / "lock").unlink(missing_ok=True)
        yield


@functools.cache
def kernels():
    """The compiled module, or None (logged once) when it cannot be built."""
    if not switched_on():
        return None
    try:
        return build()
    except Exception as error:  # noqa: BLE001 - any build failure means: use the PyTorch path
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("native Mamba2 kernels unavailable (%s); using the PyTorch fast path", first[:200])
        return None


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["build"]:
        print("usage: python -m hybridlab.model.native build")
        return 2
    begin = time.perf_counter()
    try:
        build(verbose=False)
    except Exception as error:  # noqa: BLE001
        print(f"native Mamba2 kernels did not build ({str(error).strip()[:300]}); the PyTorch path will be used")
        return 1
    print(f"native Mamba2 kernels ({variant()[0]}) ready in {cache_dir()} ({time.perf_counter() - begin:.1f} s)")
    return 0


__all__ = ["ENV_SWITCH", "build", "cache_dir", "kernels", "main", "variant"]
