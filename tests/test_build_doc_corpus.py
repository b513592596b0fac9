"""benchmarks/build_doc_corpus.py keeps AsciiDoc and Sphinx HTML prose, drops the rest, and writes a corpus evaluate can read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

from tokenmask.data import load_texts

PROSE = (
    "Use `git stash` when you want to record the current state of the working directory and the index, "
    "but want to go back to a clean working directory, as linkgit:git-reset[1] would leave it for you."
)
PAGE = f"""git-stash(1)
============

NAME
----
git-stash - Stash the changes in a dirty working directory away

SYNOPSIS
--------
[verse]
'git stash' list [<log-options>] and a very long synopsis line that has many words but is not prose at all.

DESCRIPTION
-----------

{PROSE}

list [<log-options>]::

\tList the stash entries that you currently have. Each 'stash entry' is listed with its name, the name of
\tthe branch that was current when the entry was made, and a short description of the commit.
+
----------------------------------------------
$ git stash list and then some words of a shell session that look like a sentence of prose.
----------------------------------------------

* a list item with enough words to pass the length test of the prose filter but it is a list.
"""


@pytest.fixture(scope="module")
def build():
    return load_benchmark("build_doc_corpus")


def test_prose_paragraphs_keep_prose_and_reduce_markup(build) -> None:
    paragraphs = build.prose_paragraphs(PAGE, min_words=20)
    assert paragraphs[0] == (
        "Use git stash when you want to record the current state of the working directory and the index, "
        "but want to go back to a clean working directory, as git-reset would leave it for you."
    )
    assert paragraphs[1].startswith("List the stash entries that you currently have. Each stash entry is")
    assert len(paragraphs) == 2  # heading, synopsis, listing block and list item left out


def test_documents_group_paragraphs_within_bounds(build) -> None:
    paragraphs = [" ".join(["word"] * n) + "." for n in (100, 100, 100, 400, 30)]
    docs = build.documents(paragraphs, 150, 350)
    assert [len(d.split()) for d in docs] == [300]  # 400 is past the cap alone; 30 is short
    assert all(d.count("\n\n") == 2 for d in docs)


def test_main_writes_a_corpus_evaluate_reads(build, tmp_path: Path) -> None:
    source = tmp_path / "git-doc"
    source.mkdir()
    for i in range(3):
        (source / f"page{i}.txt").write_text("\n\n".join([PROSE] * 4) + "\n", encoding="utf-8")
    output = tmp_path / "gitdocs.jsonl"
    assert (
        build.main(
            [
                "--format",
                "asciidoc",
                "--source",
                str(source),
                "--output",
                str(output),
                "--min_doc_words",
                "60",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["source"] for r in lines) == ["page0.txt", "page1.txt", "page2.txt"]
    assert [r["text"] for r in load_texts(output)] == [r["text"] for r in lines]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["git-doc", "gitdocs.jsonl"]  # no temporary left
    with pytest.raises(SystemExit, match=r"no \*\.txt files"):
        build.main(["--format", "asciidoc", "--source", str(tmp_path / "empty"), "--output", str(output)])


HTML = """<html><body><div class="related"><p>Navigation words that are not part of the page but are a long sentence.</p></div>
<div class="section"><h1>Making queries<a class="headerlink">¶</a></h1>
<p>Once you&#8217;ve created your <a href="models.html"><span class="doc">data models</span></a>, Django
automatically gives you a database-abstraction API that lets you create, retrieve, update and delete objects.
This document explains how to use this API.</p>
<div class="highlight-python"><div class="highlight"><pre>class Blog(models.Model): a code block with many words in it that is not prose at all.</pre></div></div>
<table><tr><td><p>A table cell with enough words to look like a paragraph of prose to a naive reader.</p></td></tr></table>
<p>Short one.</p>
</div></body></html>"""


def test_html_prose_paragraphs_keep_page_paragraphs_only(build) -> None:
    assert build.html_prose_paragraphs(HTML, min_words=10) == [
        "Once you\u2019ve created your data models, Django automatically gives you a database-abstraction API "
        "that lets you create, retrieve, update and delete objects. This document explains how to use this API."
    ]


def test_sphinx_html_pages_skip_index_and_source_folders(build, tmp_path: Path) -> None:
    source = tmp_path / "html"
    (source / "topics").mkdir(parents=True)
    (source / "_modules").mkdir()
    page = HTML.replace("<p>Short one.</p>", "".join(f"<p>{PROSE} Part {i}.</p>" for i in range(3)))
    (source / "topics" / "queries.html").write_text(page, encoding="utf-8")
    (source / "_modules" / "code.html").write_text(page, encoding="utf-8")
    (source / "genindex.html").write_text(page, encoding="utf-8")
    output = tmp_path / "out.jsonl"
    build.main(
        ["--format", "sphinx-html", "--source", str(source), "--output", str(output), "--min_doc_words", "60"]
    )
    assert [json.loads(line)["source"] for line in output.read_text(encoding="utf-8").splitlines()] == [
        "topics/queries.html"
    ]


def test_a_source_file_that_is_not_utf8_is_named_with_the_fix(build, tmp_path: Path) -> None:
    source = tmp_path / "git-doc"
    source.mkdir()
    (source / "bad.txt").write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(SystemExit, match=r"bad\.txt is not UTF-8.*iconv"):
        build.main(["--format", "asciidoc", "--source", str(source), "--output", str(tmp_path / "out.jsonl")])
    assert not (tmp_path / "out.jsonl").exists()
