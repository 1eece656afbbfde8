"""Where the demo corpus comes from: two Debian documentation packages, unpacked without installing.

linux-doc-6.1   kernel documentation (reStructuredText and text, gzipped)   GPL-2.0
python3.11-doc  Python 3.11 documentation (Sphinx HTML)                     PSF-2.0
"""

from __future__ import annotations

import gzip
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hybridlab.data.clean import html_to_text, normalise_whitespace


@dataclass(frozen=True)
class Source:
    package: str
    license: str
    root: str  # directory inside the unpacked package


SOURCES = (
    Source("linux-doc-6.1", "GPL-2.0", "usr/share/doc/linux-doc-6.1/Documentation"),
    Source("python3.11-doc", "PSF-2.0", "usr/share/doc/python3.11/html"),
)

# Not English prose, or machine-generated indexes.
_SKIP_DIRS = {"translations", "_sources", "_static", "_images", "_downloads", "devicetree"}
_SKIP_NAMES = {"search.html", "py-modindex.html", "genindex.html", "conf.py"}


@dataclass(frozen=True)
class Document:
    path: str  # "<package>/<path inside the package root>": stable across machines
    text: str


def download_and_unpack(workdir: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """`apt-get download` each package into workdir and `dpkg-deb -x` it there. Changes nothing on the system."""
    workdir.mkdir(parents=True, exist_ok=True)
    unpacked = {}
    for package in packages:
        debs = sorted(workdir.glob(f"{package}_*.deb"))
        if not debs:
            _run(
                ["apt-get", "download", package],
                workdir,
                hint="run `apt-get update` (needs root) or pass --debs DIR with the .deb files",
            )
            debs = sorted(workdir.glob(f"{package}_*.deb"))
        target = workdir / package
        if not target.exists():
            tmp = workdir / f".{package}.unpacking"
            tmp.mkdir(exist_ok=True)
            _run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)], workdir, hint="is dpkg-deb installed?")
            tmp.rename(target)
        unpacked[package] = target
    return unpacked


def _run(cmd: list[str], cwd: Path, hint: str) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"`{cmd[0]}` not found: {hint}") from err
    if done.returncode != 0:
        raise ValueError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}; {hint}")


def read_documents(package_dir: Path, source: Source) -> Iterator[Document]:
    """Every prose file of one unpacked package as cleaned text, in sorted path order."""
    root = package_dir / source.root
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist: is {package_dir} an unpacked {source.package}?")
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or _SKIP_DIRS & set(rel.parts[:-1]) or rel.name in _SKIP_NAMES:
            continue
        if rel.name.startswith("genindex"):
            continue
        text = read_text_file(path)
        if text and len(text) >= 200:  # drop stubs that are only a title or a redirect
            name = str(rel)[:-3] if rel.suffix == ".gz" else str(rel)
            yield Document(f"{source.package}/{name}", text)


def read_text_file(path: Path) -> str | None:
    """Cleaned text of one .rst/.txt/.html file (optionally gzipped); None for other kinds."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    kind = name.rsplit(".", 1)[-1] if "." in name else ""
    if kind not in {"rst", "txt", "html"}:
        return None
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    return html_to_text(text) if kind == "html" else normalise_whitespace(text)
