"""Build a held-out corpus from a Debian documentation package: prose only, never used for tuning.

The pydocs test split (docs/results.md) has been read by many stops. These corpora re-measure fixed
methods on text no setting was chosen on. They are not in the repository and are used for nothing but
scoring; the Linux kernel documentation stays reserved for the maintainers' check.

Two source formats:

- ``asciidoc``: AsciiDoc ``*.txt`` files, e.g. Git's documentation (Debian's ``git-doc``)::

    apt-get download git-doc && dpkg -x git-doc_*.deb git-doc
    python benchmarks/build_doc_corpus.py --format asciidoc --source git-doc/usr/share/doc/git-doc \\
        --output data_out/gitdocs.jsonl

  Paragraphs are blank-line separated; headings, delimited blocks (listings, examples, tables),
  ``[verse]``/``[literal]`` paragraphs, option terms (``term::``) and list continuations (``+``) are left
  out; markup is reduced to text (``linkgit:git-log[1]`` becomes ``git-log``, ```code``` and
  ``'emphasis'`` lose their quotes).
- ``sphinx-html``: the ``*.html`` pages of a Sphinx build, e.g. Django's documentation (Debian's
  ``python-django-doc``)::

    apt-get download python-django-doc && dpkg -x python-django-doc_*.deb django-doc
    python benchmarks/build_doc_corpus.py --format sphinx-html \\
        --source django-doc/usr/share/doc/python-django-doc/html --output data_out/djangodocs.jsonl

  Paragraphs are the ``<p>`` elements of the page body, outside code, tables, navigation and the
  index pages (``genindex``, ``search``, ``py-modindex``, ``_modules``); inline markup becomes its text.

Either way, a paragraph is kept when it is running prose: at least ``--min_words`` words, at least 70 %
of them alphabetic, ending like a sentence. Consecutive prose paragraphs of one file are grouped into
documents of ``--min_doc_words`` to ``--max_doc_words`` words (a paragraph never split), then the
documents are shuffled with ``--seed``. Each line is ``{"text": ..., "source": ...}`` like
``data/pydocs.jsonl``; ``tokenmask evaluate --corpus FILE.jsonl`` reads the file directly.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

from tokenmask.io import atomic_write_text

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


def _is_prose(paragraph: str, min_words: int) -> bool:
    words = paragraph.split()
    if len(words) < min_words or not paragraph.endswith((".", ":", ")", "?", "!")):
        return False
    return sum(w.strip(".,;:()\"'!?\u2019\u201c\u201d").isalpha() for w in words) >= 0.7 * len(words)


def prose_paragraphs(text: str, min_words: int = 25) -> list[str]:
    """The running-prose paragraphs of one AsciiDoc file, markup reduced to plain text."""
    out = []
    for block in _blocks(text.splitlines()):
        if any(line.startswith(("$ ", "* ", "- ", ". ", "|", "<")) for line in block):
            continue  # shell sessions, lists, tables, markup
        paragraph = _plain(" ".join(block))
        if _is_prose(paragraph, min_words):
            out.append(paragraph)
    return out


class _SphinxParagraphs(HTMLParser):
    """Collects the text of ``<p>`` elements outside code, tables and navigation."""

    SKIPPED = ("pre", "table", "nav", "footer", "header", "script", "style")
    VOID = ("br", "img", "hr", "input", "meta", "link")  # no end tag: never pushed on the stack
    SKIPPED_CLASSES = (
        "highlight",
        "sphinxsidebar",
        "related",
        "nav",
        "footer",
        "toctree-wrapper",
        "admonition-title",
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._stack: list[bool] = []  # per open element: whether it hides its content
        self._current: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        hides = tag in self.SKIPPED or any(c.startswith(self.SKIPPED_CLASSES) for c in classes)
        self._stack.append(hides)
        if tag == "p" and not any(self._stack):
            self._current = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID or not self._stack:
            return
        self._stack.pop()
        if tag == "p" and self._current is not None:
            self.paragraphs.append(re.sub(r"\s+", " ", "".join(self._current)).strip())
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and not any(self._stack):
            self._current.append(data)


def html_prose_paragraphs(html: str, min_words: int = 25) -> list[str]:
    """The running-prose paragraphs of one Sphinx HTML page (the text of its ``<p>`` elements)."""
    parser = _SphinxParagraphs()
    parser.feed(html)
    parser.close()
    return [p for p in parser.paragraphs if _is_prose(p, min_words)]


FORMATS = {"asciidoc": ("*.txt", prose_paragraphs), "sphinx-html": ("**/*.html", html_prose_paragraphs)}
"""Per ``--format``: the source files' glob and the paragraph extractor."""

SKIPPED_PAGES = ("genindex", "search", "py-modindex", "_modules", "_static", "_images", "_sources")
"""Sphinx pages and folders that hold no prose (indexes, sources, assets)."""


def documents(paragraphs: list[str], min_words: int, max_words: int) -> list[str]:
    """Consecutive paragraphs grouped into documents of ``min_words`` to ``max_words`` words.

    A document is closed once it holds ``(min_words + max_words) / 2`` words, or when the next paragraph
    would take it past ``max_words``; a group shorter than ``min_words`` is dropped."""
    target = (min_words + max_words) // 2
    out: list[str] = []
    group: list[str] = []
    count = 0
    for paragraph in paragraphs:
        words = len(paragraph.split())
        if group and count + words > max_words:
            if count >= min_words:
                out.append("\n\n".join(group))
            group, count = [], 0
        group.append(paragraph)
        count += words
        if count >= target:
            if count <= max_words:
                out.append("\n\n".join(group))
            group, count = [], 0
    if group and min_words <= count <= max_words:
        out.append("\n\n".join(group))
    return out


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SystemExit(
            f"{file} is not UTF-8 ({exc.reason} at byte {exc.start}). Fix: convert it (iconv -t UTF-8) or remove it "
            "from --source."
        ) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="the source files' format")
    parser.add_argument("--source", required=True, help="the documentation folder of the unpacked package")
    parser.add_argument("--output", required=True, help="the .jsonl file written")
    parser.add_argument("--min_words", type=int, default=25, help="shortest prose paragraph kept")
    parser.add_argument("--min_doc_words", type=int, default=176)
    parser.add_argument("--max_doc_words", type=int, default=594)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pattern, extract = FORMATS[args.format]
    root = Path(args.source)
    files = sorted(
        f
        for f in root.glob(pattern)
        if not any(part.startswith(SKIPPED_PAGES) for part in f.relative_to(root).parts)
    )
    if not files:
        raise SystemExit(
            f"no {pattern} files in {args.source}. Fix: pass --source the documentation folder of the unpacked "
            "package (apt-get download PACKAGE && dpkg -x PACKAGE_*.deb DIR; e.g. DIR/usr/share/doc/git-doc)."
        )
    records = [
        {"text": doc, "source": file.relative_to(root).as_posix()}
        for file in files
        for doc in documents(extract(_read(file), args.min_words), args.min_doc_words, args.max_doc_words)
    ]
    random.Random(args.seed).shuffle(records)
    output = atomic_write_text(
        args.output, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    )
    words = sorted(len(r["text"].split()) for r in records)
    print(
        f"{output}: {len(records)} documents from {len({r['source'] for r in records})} of {len(files)} files, "
        f"{sum(words)} words (median {words[len(words) // 2] if words else 0})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
