"""Where the demo corpus comes from: Debian documentation packages, unpacked without installing.

Each `Source` names a package, its licence, the folder inside it that holds the documentation and the
kinds of file read there (reStructuredText/plain text, HTML, GNU info, Perl POD; optionally gzipped).
Document paths are "<package>/<path inside the root>" (an info manual adds "/<node name>"), so they are
the same on every machine and the train/val split, a hash of the path, never moves a document.
"""

from __future__ import annotations

import fnmatch
import gzip
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hybridlab.core.errors import UserError
from hybridlab.data.clean import html_to_text, info_nodes, normalise_whitespace, pod_to_text


@dataclass(frozen=True)
class Source:
    package: str
    license: str
    root: str  # directory inside the unpacked package
    kinds: tuple[str, ...] = ("rst", "txt", "html")  # file kinds read (the suffix, after any .gz)
    skip: tuple[str, ...] = ()  # fnmatch patterns of paths under root left out (duplicates, code listings)
    include: tuple[str, ...] = ()  # when given, only paths under root matching one of these fnmatch patterns
    about: str = ""  # one line for the data card


SOURCES = (
    Source(
        "linux-doc-6.1",
        "GPL-2.0",
        "usr/share/doc/linux-doc-6.1/Documentation",
        about="the Linux kernel's `Documentation/` tree (reStructuredText and text); translations and devicetree "
        "binding schemas left out",
    ),
    Source("python3.11-doc", "PSF-2.0", "usr/share/doc/python3.11/html", about="the Python 3.11 docs (Sphinx HTML)"),
    Source(
        "postgresql-doc-15",
        "PostgreSQL",
        "usr/share/doc/postgresql-doc-15/html",
        kinds=("html",),
        skip=("bookindex.html",),
        about="the PostgreSQL 15 manual (DocBook HTML)",
    ),
    Source(
        "git-doc",
        "GPL-2.0",
        "usr/share/doc/git-doc",
        kinds=("html",),  # every page also ships as its AsciiDoc .txt source: read one copy
        about="Git's manual pages, user manual, how-tos and technical notes (HTML)",
    ),
    Source(
        "sqlite3-doc",
        "public-domain",
        "usr/share/doc/sqlite3",
        kinds=("html",),
        skip=("doc_backlink_crossref.html",),  # a generated cross-reference index
        about="the SQLite documentation (HTML)",
    ),
    Source(
        "bash-doc",
        "GFDL-1.3+",
        "usr/share/doc/bash-doc",
        kinds=("html",),
        about="the Bash reference manual and manual page (HTML)",
    ),
    Source(
        "binutils-doc",
        "GFDL-1.3+",
        "usr/share/info",
        kinds=("info",),
        about="the manuals of as, ld, binutils, gprof (GNU info, one document per node)",
    ),
    Source(
        "autoconf-doc",
        "GFDL-1.3+",
        "usr/share/info",
        kinds=("info",),
        about="the Autoconf manual (GNU info, one document per node)",
    ),
    Source(
        "cmake-doc",
        "BSD-3-Clause",
        "usr/share/doc/cmake-data/html",
        kinds=("html",),
        about="the CMake documentation (Sphinx HTML)",
    ),
    Source(
        "python-django-doc",
        "BSD-3-Clause",
        "usr/share/doc/python-django-doc/html",
        kinds=("html",),
        skip=("_modules/*",),  # highlighted source code
        about="the Django 3.2 documentation (Sphinx HTML)",
    ),
    Source(
        "perl-doc",
        "GPL-1.0+ or Artistic-1.0",
        "usr/share/perl/5.36.0/pod",
        kinds=("pod",),
        skip=("perltoc.pod", "perluniprops.pod"),  # a table of contents and a property table
        about="the Perl 5.36 manual pages (POD)",
    ),
    Source(
        "nodejs-doc",
        "Expat",
        "usr/share/doc/nodejs/api",
        kinds=("html",),
        skip=("all.html",),  # every other page concatenated
        about="the Node.js 18 API documentation (HTML)",
    ),
    Source(
        "zsh-doc",
        "Zsh (MIT-like)",
        "usr/share/doc/zsh-common/html",
        kinds=("html",),
        about="the Zsh manual (texinfo HTML)",
    ),
    Source(
        "octave-doc",
        "GPL-3.0+",
        "usr/share/doc/octave",
        kinds=("html",),
        about="the GNU Octave manual (texinfo HTML)",
    ),
    Source(
        "r-doc-html",
        "GPL-2.0+",
        "usr/share/R/doc/manual",
        kinds=("html",),
        about="the R manuals (HTML)",
    ),
    Source(
        "debian-reference-en",
        "GPL-2.0+",
        "usr/share/debian-reference",
        kinds=("html",),
        about="the Debian Reference (HTML)",
    ),
    Source(
        "debian-policy",
        "GPL-2.0+",
        "usr/share/doc/debian-policy",
        kinds=("html",),
        skip=("*-1.html",),  # single-page copies of the split manuals
        about="the Debian Policy Manual and its companion documents (HTML)",
    ),
    Source(
        "developers-reference",
        "GPL-2.0",
        "usr/share/developers-reference",
        kinds=("html",),
        skip=("developers-reference.html",),  # single-page copy of the other pages
        about="the Debian Developer's Reference (Sphinx HTML)",
    ),
    Source(
        "exim4-doc-html",
        "GPL-2.0+",
        "usr/share/doc/exim4-doc-html",
        kinds=("html",),
        about="the Exim 4 specification (HTML)",
    ),
    Source(
        "rust-doc",
        "MIT OR Apache-2.0",
        "usr/share/doc/rust-doc/html",
        kinds=("html",),
        include=tuple(
            f"{book}/*"
            for book in ("book", "reference", "nomicon", "rustc", "edition-guide", "embedded-book", "rust-by-example")
        ),
        skip=("*/print.html", "*/toc.html"),  # every chapter again on one page; the API pages are left out
        about="the Rust books: The Rust Programming Language, the Reference, the Rustonomicon, rustc, the edition "
        "guide, the Embedded book, Rust by Example (mdBook HTML)",
    ),
    Source(
        "erlang-doc",
        "Apache-2.0",
        "usr/share/doc/erlang-doc",
        kinds=("html",),
        skip=("lib/wx-*", "lib/jinterface-*"),  # generated wxWidgets and Java API listings
        about="the Erlang/OTP 25 guides and reference manuals (HTML)",
    ),
    Source(
        "python-pandas-doc",
        "BSD-3-Clause",
        "usr/share/doc/python-pandas-doc/html",
        kinds=("html",),
        skip=("_modules/*",),
        about="the pandas documentation: user guide, release notes, API reference (Sphinx HTML)",
    ),
    Source(
        "python-scipy-doc",
        "BSD-3-Clause",
        "usr/share/doc/python-scipy-doc/html",
        kinds=("html",),
        skip=("_modules/*",),
        about="the SciPy documentation: tutorials and API reference (Sphinx HTML)",
    ),
    Source(
        "python-sqlalchemy-doc",
        "MIT",
        "usr/share/doc/python-sqlalchemy-doc/html",
        kinds=("html",),
        skip=("_modules/*",),
        about="the SQLAlchemy documentation (Sphinx HTML)",
    ),
    Source(
        "python-celery-doc",
        "BSD-3-Clause",
        "usr/share/doc/python-celery-doc/html",
        kinds=("html",),
        skip=("_modules/*",),
        about="the Celery documentation (Sphinx HTML)",
    ),
    Source(
        "python-pytest-doc",
        "MIT",
        "usr/share/doc/python-pytest-doc/html",
        kinds=("html",),
        skip=("_modules/*",),
        about="the pytest documentation (Sphinx HTML)",
    ),
    Source(
        "python-flask-doc",
        "BSD-3-Clause",
        "usr/share/doc/python-flask-doc/html",
        kinds=("html",),
        skip=("_modules/*",),
        about="the Flask documentation (Sphinx HTML)",
    ),
    Source(
        "bind9-doc",
        "MPL-2.0",
        "usr/share/doc/bind9-doc/arm",
        kinds=("html",),
        about="the BIND 9 Administrator Reference Manual (Sphinx HTML)",
    ),
)


def select_sources(names: str | None) -> tuple[Source, ...]:
    """The declared sources named in a comma-separated list (all of them for None), in declaration order."""
    if not names:
        return SOURCES
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in {s.package for s in SOURCES}]
    if unknown or not wanted:
        raise UserError(
            f"--sources {names}: unknown package(s) {unknown}; choose from {', '.join(s.package for s in SOURCES)}"
        )
    return tuple(s for s in SOURCES if s.package in wanted)


# Not English prose, or machine-generated indexes.
_SKIP_DIRS = {"translations", "_sources", "_static", "_images", "_downloads", "devicetree"}
_SKIP_NAMES = {"search.html", "py-modindex.html", "genindex.html", "conf.py"}
MIN_CHARS = 200  # stubs that are only a title or a redirect are dropped


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


def deb_version(deb: Path) -> str:
    """The package version a .deb file holds, from its control file."""
    done = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


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
    seen: set[int] = set()  # texts already read: some packages ship one page under two names
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or _SKIP_DIRS & set(rel.parts[:-1]) or rel.name in _SKIP_NAMES:
            continue
        if rel.name.startswith("genindex") or any(fnmatch.fnmatch(str(rel), p) for p in source.skip):
            continue
        if source.include and not any(fnmatch.fnmatch(str(rel), p) for p in source.include):
            continue
        name = str(rel)[:-3] if rel.suffix == ".gz" else str(rel)
        kind = file_kind(path.name)
        if kind not in source.kinds:
            continue
        if kind == "info":
            for node, text in info_nodes(_read(path)):
                if len(text) >= MIN_CHARS and _first_time(text, seen):
                    yield Document(f"{source.package}/{name}/{node}", text)
            continue
        text = read_text_file(path)
        if text and len(text) >= MIN_CHARS and _first_time(text, seen):
            yield Document(f"{source.package}/{name}", text)


def _first_time(text: str, seen: set[int]) -> bool:
    key = hash(text)
    if key in seen:
        return False
    seen.add(key)
    return True


def file_kind(name: str) -> str:
    """ "rst", "txt", "html", "pod" or "info" ("zsh.info-3.gz" is info); "" for anything else."""
    name = name[:-3] if name.endswith(".gz") else name
    kind = name.rsplit(".", 1)[-1] if "." in name else ""
    if kind.startswith("info-") and kind[5:].isdigit():
        return "info"
    return kind if kind in {"rst", "txt", "html", "pod", "info"} else ""


def _read(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def read_text_file(path: Path) -> str | None:
    """Cleaned text of one .rst/.txt/.html/.pod file (optionally gzipped); None for other kinds."""
    kind = file_kind(path.name)
    if kind not in {"rst", "txt", "html", "pod"}:
        return None
    text = _read(path)
    if kind == "html":
        return html_to_text(text)
    return pod_to_text(text) if kind == "pod" else normalise_whitespace(text)
