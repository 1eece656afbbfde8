"""Run every benchmark in this package, one after another, each in its own process.

    python -m benchmarks.run_all            # all
    python -m benchmarks.run_all prefill    # those whose name contains "prefill"

A benchmark is any module here with a main() and no leading underscore. A failing one is
reported and the rest still run; the exit code says whether all succeeded.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"run_all"}


def benchmark_names() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(HERE)])
        if not info.name.startswith("_") and info.name not in SKIP
    )


def main(argv: list[str] | None = None) -> int:
    patterns = (argv if argv is not None else sys.argv[1:]) or [""]
    names = [name for name in benchmark_names() if any(p in name for p in patterns)]
    if not names:
        print(f"no benchmark matches {patterns}; available: {', '.join(benchmark_names())}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"=== benchmarks.{name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=HERE.parent)
        print(
            f"=== benchmarks.{name}: {'ok' if code == 0 else f'FAILED (exit {code})'} "
            f"in {time.perf_counter() - start:.0f} s\n",
            flush=True,
        )
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
