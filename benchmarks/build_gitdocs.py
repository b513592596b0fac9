"""Build ``gitdocs.jsonl``: prose of Git's documentation, a second held-out corpus never used for tuning.

The pydocs test split (docs/results.md) has been read by many stops. This corpus is an independent
re-measure in another domain (Git's manual pages and guides, not the Python documentation). It is
not in the repository and is used for nothing but scoring fixed methods; the Linux kernel documentation
stays reserved for the maintainers' check.

Source: Debian's ``git-doc`` package (AsciiDoc sources ``/usr/share/doc/git-doc/*.txt``)::

    apt-get download git-doc && dpkg -x git-doc_*.deb git-doc
    python benchmarks/build_gitdocs.py --source git-doc/usr/share/doc/git-doc --output data_out/gitdocs.jsonl

Each source file's paragraphs of running prose are kept: blank-line separated, at least
``--min_words`` words, at least 70 % of its words alphabetic, ending like a sentence. Headings, delimited
blocks (listings, examples, tables), ``[verse]``/``[literal]`` paragraphs, option terms (``term::``)
and list continuations (``+``) are left out; AsciiDoc markup is reduced to text (``linkgit:git-log[1]``
becomes ``git-log``, ```code``` and ``'emphasis'`` lose their quotes). Consecutive prose paragraphs
of one file are grouped into documents of ``--min_doc_words`` to ``--max_doc_words`` words (a
paragraph never split), then the documents are shuffled with ``--seed``. Each line is
``{"text": ..., "source": ...}`` like ``data/pydocs.jsonl``; ``tokenmask evaluate --corpus`` reads the file directly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from pathlib import Path

_DELIMITER = re.compile(r"^(-{4,}|\.{4,}|={4,}|\*{4,}|_{4,}|\+{4,}|\|={3,}|/{4,})\s*$")
_UNDERLINE = re.compile(r"^[-=~^+]{3,}\s*$")
_MARKUP = [
    (re.compile(r"linkgit:([\w.-]+)\[\d\]"), r"\1"),
    (re.compile(r"<<[^,>]+,([^>]+)>>"), r"\1"),
    (re.compile(r"<<([^>]+)>>"), r"\1"),
    (re.compile(r"`([^`]+)`"), r"\1"),
    (re.compile(r"(?<![\w'])'([^'\n]+)'(?![\w'])"), r"\1"),
    (re.compile(r"\{litdd\}"), "--"),
    (re.compile(r"\{caret\}"), "^"),
    (re.compile(r"\{tilde\}"), "~"),
]


def _blocks(lines: list[str]) -> list[list[str]]:
    """Blank-line separated paragraphs outside delimited blocks, with headings and block attributes removed."""
    paragraphs: list[list[str]] = []
    current: list[str] = []
    inside: str | None = None
    skip_next = False
    for i, raw in enumerate(lines):
        line = raw.rstrip("\n")
        stripped = line.strip()
        if _DELIMITER.match(stripped) and not (i and lines[i - 1].strip() and _UNDERLINE.match(stripped)):
            inside = None if inside == stripped else (inside or stripped)
            current = []
            continue
        if inside is not None:
            continue
        if not stripped:
            if current and not skip_next:
                paragraphs.append(current)
            current, skip_next = [], False
            continue
        if _UNDERLINE.match(stripped) and current:
            current = []  # the line before was a heading
            continue
        if stripped.startswith(("[verse]", "[literal]", "[listing]", "[source")):
            skip_next = True
            continue
        if (
            stripped.startswith(("=", "[[", "ifdef::", "ifndef::", "endif::", "include::", ":"))
            or stripped == "+"
        ):
            if current and not skip_next:
                paragraphs.append(current)
            current, skip_next = [], False
            continue
        if stripped.endswith("::") or stripped.endswith(";;"):
            if current and not skip_next:
                paragraphs.append(current)
            current, skip_next = [], False
            continue
        current.append(stripped)
    if current and not skip_next:
        paragraphs.append(current)
    return paragraphs


def _plain(text: str) -> str:
    for pattern, replacement in _MARKUP:
        text = pattern.sub(replacement, text)
    return re.sub(r"\s+", " ", text).strip()


def prose_paragraphs(text: str, min_words: int = 25) -> list[str]:
    """The running-prose paragraphs of one AsciiDoc file, markup reduced to plain text."""
    out = []
    for block in _blocks(text.splitlines()):
        if any(line.startswith(("$ ", "* ", "- ", ". ", "|", "<")) for line in block):
            continue  # shell sessions, lists, tables, markup
        paragraph = _plain(" ".join(block))
        words = paragraph.split()
        if len(words) < min_words or not paragraph.endswith((".", ":", ")", "?", "!")):
            continue
        if sum(w.strip(".,;:()\"'!?").isalpha() for w in words) < 0.7 * len(words):
            continue
        out.append(paragraph)
    return out


def documents(paragraphs: list[str], min_words: int, max_words: int) -> list[str]:
    """Consecutive paragraphs grouped into documents of ``min_words`` to ``max_words`` words.

    A document is closed once it holds ``(min_words + max_words) / 2`` words, or when the next paragraph
    would take it past ``max_words``; a group shorter than ``min_words`` is dropped."""
    target = (min_words + max_words) // 2
    out: list[str] = []
    group: list[str] = []
    for paragraph in paragraphs:
        count = sum(len(p.split()) for p in group)
        if group and count + len(paragraph.split()) > max_words:
            if count >= min_words:
                out.append("\n\n".join(group))
            group = []
        group.append(paragraph)
        if sum(len(p.split()) for p in group) >= target:
            if sum(len(p.split()) for p in group) <= max_words:
                out.append("\n\n".join(group))
            group = []
    if group and min_words <= sum(len(p.split()) for p in group) <= max_words:
        out.append("\n\n".join(group))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", required=True, help="the git-doc folder (usr/share/doc/git-doc of the package)"
    )
    parser.add_argument("--output", default="data_out/gitdocs.jsonl")
    parser.add_argument("--min_words", type=int, default=25, help="shortest prose paragraph kept")
    parser.add_argument("--min_doc_words", type=int, default=176)
    parser.add_argument("--max_doc_words", type=int, default=594)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = sorted(Path(args.source).glob("*.txt"))
    if not files:
        raise SystemExit(
            f"no .txt files in {args.source}. Fix: pass --source the git-doc folder "
            "(apt-get download git-doc && dpkg -x git-doc_*.deb git-doc; then git-doc/usr/share/doc/git-doc)."
        )
    records = [
        {"text": doc, "source": file.name}
        for file in files
        for doc in documents(
            prose_paragraphs(file.read_text(encoding="utf-8"), args.min_words),
            args.min_doc_words,
            args.max_doc_words,
        )
    ]
    random.Random(args.seed).shuffle(records)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with partial.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, output)
    words = sorted(len(r["text"].split()) for r in records)
    print(
        f"{output}: {len(records)} documents from {len({r['source'] for r in records})} of {len(files)} files, "
        f"{sum(words)} words (median {words[len(words) // 2] if words else 0})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
