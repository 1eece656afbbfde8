"""Corpus builder: markup stripping, deterministic split, tokenizer round trip, reproducible end to end.

The end-to-end test builds real .deb packages with `dpkg-deb --build` from a few synthetic documents,
so the whole path (unpack, read, split, tokenizer, arrays, card) runs without apt or the network.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridlab.core.errors import UserError
from hybridlab.data.build import build_corpus, is_validation, split_documents
from hybridlab.data.clean import html_to_text, info_nodes, normalise_whitespace, pod_to_text
from hybridlab.data.sources import SOURCES, Document, Source, read_documents
from hybridlab.data.tokenizer import END_OF_TEXT, load_tokenizer, save_tokenizer, train_tokenizer
from hybridlab.data.tokens import (
    TokenBatches,
    contiguous_windows,
    load_tokens,
    save_tokens,
    sha256_file,
    unigram_entropy,
)

PAGE = """<!DOCTYPE html><html><head><title>os — Miscellaneous</title>
<style>body { color: red }</style><script>var DOCUMENTATION_OPTIONS = {};</script></head>
<body><div class="related" role="navigation"><ul><li><a href="index.html">index</a></li></ul></div>
<div class="document"><div class="body" role="main">
<section id="os"><h1>os &mdash; Miscellaneous interfaces<a class="headerlink" href="#os">¶</a></h1>
<p>This module provides a   portable way of using <code>operating&nbsp;system</code> dependent
functionality.</p><pre>import os
os.getcwd()</pre></section></div></div>
<div class="sphinxsidebar" role="navigation"><h3>Quick search</h3></div>
<div class="footer">&copy; Copyright 2001-2023, Python Software Foundation.</div></body></html>"""


def test_html_to_text_keeps_the_article_and_drops_boilerplate():
    text = html_to_text(PAGE)
    assert text.startswith("os — Miscellaneous interfaces\n")
    assert "portable way of using operating system dependent" in text
    assert "import os\nos.getcwd()" in text  # code keeps its line breaks
    for junk in ("DOCUMENTATION_OPTIONS", "color: red", "Quick search", "Copyright", "index", "¶"):
        assert junk not in text


def test_html_without_main_role_falls_back_to_the_whole_body():
    assert html_to_text("<html><body><p>Just <b>this</b>.</p><script>x()</script></body></html>") == "Just this.\n"


def test_normalise_whitespace():
    raw = "Title\r\n=====   \r\n\n\n\n  indented\t\ttext  \nend"
    assert normalise_whitespace(raw) == "Title\n=====\n\n  indented text\nend\n"
    assert normalise_whitespace(" \n\t\n") == ""


def test_split_is_a_deterministic_function_of_the_path():
    docs = [Document(f"pkg/dir/file{i}.rst", "x") for i in range(2000)]
    train, val = split_documents(docs, 0.05)
    assert len(train) + len(val) == 2000 and 60 <= len(val) <= 140  # ~5%, binomial spread
    shuffled = list(reversed(docs))
    assert {d.path for d in split_documents(shuffled, 0.05)[1]} == {d.path for d in val}
    assert is_validation("pkg/dir/file0.rst", 0.05) == is_validation("pkg/dir/file0.rst", 0.05)
    # A larger fraction only moves documents from train to val, never back.
    assert {d.path for d in val} <= {d.path for d in split_documents(docs, 0.2)[1]}


TEXTS = [
    "The scheduler picks the next task to run on each CPU.",
    "Use os.getcwd() to get the current working directory — naïve café ✓.",
    "Memory barriers order loads and stores between processors.",
] * 20


def test_tokenizer_round_trips_through_transformers(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=400)
    save_tokenizer(tok, tmp_path / "tok")
    hf = load_tokenizer(tmp_path / "tok")
    assert hf.eos_token == hf.bos_token == END_OF_TEXT and hf.pad_token_id == 1 and hf.eos_token_id == 0
    for text in TEXTS[:3] + ["unseen bytes: \x00 ☃ 𝄞\n\tend"]:
        ids = hf(text, add_special_tokens=False).input_ids
        assert ids == tok.encode(text).ids
        assert hf.decode(ids) == text  # byte-level: lossless, even for unseen characters
    assert tok.encode("scheduler").ids != list(tok.encode("scheduler").ids[:1])  # merges were learned
    assert len(tok.encode(TEXTS[0]).ids) < len(TEXTS[0].encode()) / 2


def test_tokenizer_training_is_deterministic():
    a = train_tokenizer(TEXTS, vocab_size=350).to_str()
    b = train_tokenizer(TEXTS, vocab_size=350).to_str()
    assert a == b


def test_bad_vocab_size_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, vocab_size=70000)


def test_token_arrays_and_batches(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    save_tokens(tmp_path / "t.npy", tokens)
    loaded = load_tokens(tmp_path / "t.npy")
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, tokens)
    with pytest.raises(ValueError, match="uint16"):
        save_tokens(tmp_path / "bad.npy", tokens.astype(np.int64))
    with pytest.raises(FileNotFoundError, match="hybridlab data build"):
        load_tokens(tmp_path / "missing.npy")
    batches = TokenBatches(loaded, batch_size=4, seq_len=16, seed=7)
    b3 = batches.batch(3)
    assert b3.shape == (4, 16) and b3.dtype == torch.int64
    assert torch.equal(b3, TokenBatches(loaded, 4, 16, seed=7).batch(3))  # a pure function of (seed, step)
    assert not torch.equal(b3, batches.batch(4))
    assert torch.equal(b3[:, 1:] - b3[:, :-1], torch.ones(4, 15, dtype=torch.int64))  # contiguous windows
    windows = contiguous_windows(loaded, 100, max_windows=3)
    assert windows.shape == (3, 100) and windows[2, 0] == 200


def test_unigram_entropy():
    assert unigram_entropy(np.array([5, 5, 5], dtype=np.uint16)) == 0.0
    assert unigram_entropy(np.array([0, 1, 2, 3], dtype=np.uint16)) == pytest.approx(np.log(4))


def _fake_deb(debs: Path, package: str, root: str, files: dict[str, bytes]) -> None:
    """A real Debian package built with dpkg-deb, holding `files` under `root`."""
    tree = debs / f"{package}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    )
    for rel, data in files.items():
        path = tree / root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(tree), str(debs / f"{package}_1.0_all.deb")],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)


def _sentence(i: int) -> str:
    return (
        f"Section {i}. The device driver registers interrupt handler number {i} and then reads "
        f"the status register before it clears the pending bit.\n\n"
    )


@pytest.fixture(scope="module")
def tiny_debs(tmp_path_factory):
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not available")
    debs = tmp_path_factory.mktemp("debs")
    kernel = {f"area{i % 3}/doc{i}.rst.gz": gzip.compress((_sentence(i) * 5).encode()) for i in range(30)}
    kernel["translations/zh_CN/index.rst.gz"] = gzip.compress(("中文文档 " * 100).encode())
    kernel["tiny.txt.gz"] = gzip.compress(b"stub")  # under 200 characters: dropped
    _fake_deb(debs, "linux-doc-6.1", "usr/share/doc/linux-doc-6.1/Documentation", kernel)
    python = {
        f"library/mod{i}.html": PAGE.replace("functionality.", "functionality. " + _sentence(i) * 2).encode()
        for i in range(10)
    }
    python["genindex-A.html"] = PAGE.encode()
    python["_sources/library/os.rst.txt"] = b"x" * 500
    _fake_deb(debs, "python3.11-doc", "usr/share/doc/python3.11/html", python)
    return debs


OLD_SOURCES = SOURCES[:2]  # the two packages of the first demo corpus; tiny_debs fakes only these


def test_build_corpus_end_to_end_is_reproducible(tiny_debs, tmp_path):
    a = build_corpus(
        tmp_path / "a",
        debs_dir=tiny_debs,
        vocab_size=300,
        val_fraction=0.2,
        calib_samples=4,
        calib_seq_len=16,
        progress=lambda *a: None,
        sources=OLD_SOURCES,
    )
    b = build_corpus(
        tmp_path / "b",
        debs_dir=tiny_debs,
        vocab_size=300,
        val_fraction=0.2,
        calib_samples=4,
        calib_seq_len=16,
        progress=lambda *a: None,
        sources=OLD_SOURCES,
    )
    assert a == b  # same inputs, same hashes of every array and of the tokenizer
    assert [s["documents"] for s in a["sources"]] == [30, 10]  # translations, stubs, indexes, _sources skipped
    assert a["documents"]["train"] + a["documents"]["val"] == 40 and a["documents"]["val"] > 0
    out = tmp_path / "a"
    train, val = load_tokens(out / "train.npy"), load_tokens(out / "val.npy")
    assert (len(train), len(val)) == (a["tokens"]["train"], a["tokens"]["val"])
    assert load_tokens(out / "calib.npy").shape == (4, 16)
    tok = load_tokenizer(out / "tokenizer")
    assert int((train == tok.eos_token_id).sum()) == a["documents"]["train"]  # one separator per document
    first_doc = tok.decode(train[: int(np.argmax(train == tok.eos_token_id))].tolist())
    assert first_doc.startswith(("Section", "Module", "os —"))
    card = (out / "DATA_CARD.md").read_text()
    assert "GPL-2.0" in card and "PSF-2.0" in card and f"{a['tokens']['train']:,}" in card
    assert json.loads((out / "corpus.json").read_text())["sha256"] == a["sha256"]


def test_build_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        build_corpus(tmp_path / "out", debs_dir=tmp_path)


INFO = (
    "This is demo.info, produced by makeinfo version 7.0 from demo.texi.\n\n"
    "\x1f\nFile: demo.info,  Node: Top,  Next: Linking,  Up: (dir)\n\nDemo manual\n***********\n\n"
    + "The linker combines object files into one executable. "
    * 6
    + "\n\n* Menu:\n\n* Linking::          How objects are combined.\n* Scripts:: Linker scripts.\n\n"
    "\x1f\nFile: demo.info,  Node: Linking,  Prev: Top,  Up: Top\n\n1 Linking\n*********\n\n"
    + "Each section is placed at an address chosen by the script. " * 6
    + "\n\x1f\nTag Table:\nNode: Top\x7f89\nNode: Linking\x7f400\n\x1f\nEnd Tag Table\n"
)


def test_info_manuals_become_one_clean_document_per_node():
    nodes = dict(info_nodes(INFO))
    assert list(nodes) == ["Top", "Linking"]
    assert nodes["Top"].startswith("Demo manual\n***********\n\nThe linker combines")
    for junk in ("Menu", "How objects are combined", "makeinfo", "Tag Table", "File: demo.info"):
        assert junk not in nodes["Top"] and junk not in nodes["Linking"]
    assert "Each section is placed" in nodes["Linking"]


POD = """=encoding utf8

=head1 NAME

perlfoo - how B<bold> and C<< $a->method >> code read

=over 4

=item * Use L<perlfunc/"open"> or L<the manual|perlsyn>.

=back

An index entryX<hidden> and a literal E<lt>tagE<gt>.

=cut
"""


def test_pod_is_reduced_to_its_text():
    assert pod_to_text(POD) == (
        "NAME\n\nperlfoo - how bold and $a->method code read\n\n* Use perlfunc open or the manual.\n\n"
        "An index entry and a literal <tag>.\n"
    )


def _new_source(kinds: tuple[str, ...], **kw) -> Source:
    return Source("fake-manual-doc", "GFDL-1.3+", "usr/share/fake", kinds=kinds, about="a fake manual", **kw)


@pytest.fixture(scope="module")
def debs_with_a_new_package(tiny_debs, tmp_path_factory):
    """The first corpus' two packages plus one new package in three formats (info, POD, HTML)."""
    debs = tmp_path_factory.mktemp("debs-v2")
    for deb in tiny_debs.glob("*.deb"):
        shutil.copyfile(deb, debs / deb.name)
    files = {
        "info/demo.info.gz": gzip.compress(INFO.encode()),
        "pod/perlfoo.pod": (POD + _sentence(7) * 3).encode(),
        "html/a.html": PAGE.replace("functionality.", _sentence(3) * 3).encode(),
        "html/z-copy.html": PAGE.replace("functionality.", _sentence(3) * 3).encode(),  # exact duplicate: dropped
        "html/skipped/b.html": PAGE.replace("functionality.", _sentence(4) * 3).encode(),
    }
    _fake_deb(debs, "fake-manual-doc", "usr/share/fake", files)
    return debs


def test_read_documents_reads_the_declared_kinds_without_duplicates(debs_with_a_new_package, tmp_path):
    subprocess.run(
        ["dpkg-deb", "-x", str(debs_with_a_new_package / "fake-manual-doc_1.0_all.deb"), str(tmp_path)], check=True
    )
    source = _new_source(("info", "pod", "html"), skip=("html/skipped/*",))
    paths = [d.path for d in read_documents(tmp_path, source)]
    assert paths == [
        "fake-manual-doc/html/a.html",
        "fake-manual-doc/info/demo.info/Top",
        "fake-manual-doc/info/demo.info/Linking",
        "fake-manual-doc/pod/perlfoo.pod",
    ]
    only_html = read_documents(tmp_path, _new_source(("html",), include=("html/skipped/*",)))
    assert [d.path for d in only_html] == ["fake-manual-doc/html/skipped/b.html"]


def test_build_with_a_reused_tokenizer_keeps_ids_split_and_lists_every_source(debs_with_a_new_package, tmp_path):
    quiet = dict(val_fraction=0.2, calib_samples=4, calib_seq_len=16, progress=lambda *a: None)
    old = build_corpus(tmp_path / "v1", debs_dir=debs_with_a_new_package, vocab_size=300, sources=OLD_SOURCES, **quiet)
    sources = OLD_SOURCES + (_new_source(("info", "pod", "html"), skip=("html/skipped/*",)),)
    new = build_corpus(
        tmp_path / "v2",
        debs_dir=debs_with_a_new_package,
        tokenizer=tmp_path / "v1" / "tokenizer",
        sources=sources,
        **quiet,
    )
    # The very tokenizer: same bytes, and the arrays are exactly its ids for each document in order.
    assert new["tokenizer_sha256"] == old["tokenizer_sha256"] == sha256_file(tmp_path / "v1/tokenizer/tokenizer.json")
    assert new["tokenizer"] == "reused" and new["vocab_size"] == old["vocab_size"]
    tok = load_tokenizer(tmp_path / "v2" / "tokenizer")
    unpacked = {s.package: debs_with_a_new_package / s.package for s in sources}
    docs = [d for s in sources for d in read_documents(unpacked[s.package], s)]
    train_docs, val_docs = split_documents(docs, 0.2)
    for name, split in (("train.npy", train_docs), ("val.npy", val_docs)):
        expected = [i for d in split for i in tok(d.text, add_special_tokens=False).input_ids + [tok.eos_token_id]]
        assert load_tokens(tmp_path / "v2" / name).tolist() == expected
    # Old documents keep their split; the new package adds to both splits.
    assert set(old["val_documents"]) == {p for p in new["val_documents"] if not p.startswith("fake-manual-doc/")}
    fake = new["sources"][2]
    assert fake["documents"] == 4 and fake["split"]["train"]["documents"] + fake["split"]["val"]["documents"] == 4
    assert sum(s["split"]["train"]["tokens"] for s in new["sources"]) == new["tokens"]["train"]
    assert sum(s["split"]["val"]["tokens"] for s in new["sources"]) == new["tokens"]["val"]
    assert (
        new["documents"]["train"] + new["documents"]["val"] == old["documents"]["train"] + old["documents"]["val"] + 4
    )
    card = (tmp_path / "v2" / "DATA_CARD.md").read_text()
    for source in new["sources"]:
        assert f"| `{source['package']}` | 1.0 | {source['license']} |" in card
        assert f"`{source['deb']}`: sha256 `{source['deb_sha256']}`" in card
        assert len(source["deb_sha256"]) == 64
    assert "reused unchanged" in card and "fake manual" in card


def test_a_bad_tokenizer_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json"):
        build_corpus(tmp_path / "out", debs_dir=tmp_path / "never", tokenizer=tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable tokenizers file"):
        build_corpus(tmp_path / "out", debs_dir=tmp_path / "never", tokenizer=tmp_path / "tokenizer.json")
    assert not (tmp_path / "out").exists() and not (tmp_path / "never").exists()
