"""The package's shape (docs/architecture.md): stages import only from their own stage or earlier ones,
at most 8 loose top-level modules, and the library never imports Streamlit."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hybridlab"
STAGES = [
    "core", "families", "model", "data", "compression", "measure", "training", "search", "study", "demo",
    "store", "jobs", "cli",
]  # fmt: skip
FACADES = {"__init__", "__main__", "calibration"}  # the public faces at the top: they may import any stage


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "hybridlab" and len(parts) > 1 and parts[1] in STAGES else None


def test_every_import_runs_to_the_same_or_an_earlier_stage():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            continue  # a facade
        own = STAGES.index(relative.parts[0])
        for name in _imports(path):
            stage = _stage(name)
            if stage is not None and STAGES.index(stage) > own:
                upward.append(f"{relative} imports {name} ({relative.parts[0]} -> {stage})")
    assert not upward, "\n".join(upward)


def test_the_top_level_holds_only_stages_and_few_loose_modules():
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose <= FACADES and len(loose) <= 8
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(STAGES)


def test_the_library_never_imports_streamlit():
    assert not [p for p in PACKAGE.rglob("*.py") if any(n.split(".")[0] == "streamlit" for n in _imports(p))]
