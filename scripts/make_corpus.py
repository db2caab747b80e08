"""Build the client's workload corpus: client/data/corpus.txt.gz.

    .venv/bin/python scripts/make_corpus.py [--stdlib DIR] [--max-bytes 2500000]

Source: the docstrings of the Python standard library, read from its source files with `ast`
(nothing is imported or executed, nothing is downloaded). The Python standard library is
distributed under the PSF License Agreement (Python Software Foundation License Version 2),
which permits copying and redistribution of derived works with the copyright notice kept;
the corpus file's header says so.

Output: gzip-compressed UTF-8 text; lines starting with '#' are the header; every other line
is one paragraph of English prose (doctest examples, tables and code-like lines removed,
whitespace collapsed, duplicates dropped). The file is deterministic for a given stdlib
(files and docstrings are visited in sorted order; gzip mtime is 0), so re-running the
script on the same Python version reproduces it byte for byte.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import inspect
import platform
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "client" / "data" / "corpus.txt.gz"
# Folders of the stdlib that are tests, vendored code or generated tables, not prose.
SKIP_PARTS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "lib2to3",
    "ensurepip",
    "turtledemo",
    "pydoc_data",
    "encodings",
}
_WORDS = re.compile(r"[A-Za-z]{2,}")
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[-=~^*+]{3,}|[|+])")


def docstrings(path: Path) -> Iterator[str]:
    """Every module, class and function docstring of one source file, in source order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    nodes = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            yield inspect.cleandoc(doc)


def paragraphs(doc: str) -> Iterator[str]:
    """Prose paragraphs of one docstring: code, doctests and tables dropped."""
    for block in re.split(r"\n\s*\n", doc):
        lines = block.splitlines()
        if not lines or any(_CODE_LINE.match(line) for line in lines):
            continue
        if any(line.startswith(("    ", "\t")) for line in lines[1:]):
            continue  # indented continuation: argument lists, literal blocks
        text = " ".join(line.strip() for line in lines)
        text = re.sub(r"\s+", " ", text).strip()
        words = text.split()
        if len(words) < 8:
            continue
        alpha = sum(1 for w in words if _WORDS.fullmatch(w.strip(".,;:()'\"!?")))
        if alpha / len(words) < 0.6:
            continue  # mostly identifiers, numbers or symbols
        if not text.isascii():
            continue
        yield text


def build(stdlib: Path, max_bytes: int) -> tuple[list[str], int]:
    seen: set[str] = set()
    out: list[str] = []
    size = 0
    files = sorted(
        p for p in stdlib.rglob("*.py") if not SKIP_PARTS.intersection(p.relative_to(stdlib).parts)
    )
    for path in files:
        for doc in docstrings(path):
            for para in paragraphs(doc):
                digest = hashlib.sha1(para.encode()).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                out.append(para)
                size += len(para) + 1
                if size >= max_bytes:
                    return out, len(files)
    return out, len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-bytes", type=int, default=2_500_000, help="uncompressed size cap")
    args = parser.parse_args(argv)

    paras, n_files = build(args.stdlib, args.max_bytes)
    header = [
        "# embench client workload corpus: prose paragraphs from the docstrings of the Python "
        f"{platform.python_version()} standard library, one paragraph per line.",
        "# Source: the CPython standard library source files (Lib/*.py), "
        "Copyright (c) 2001-2024 Python Software Foundation; All Rights Reserved.",
        "# License: PSF License Agreement (Python Software Foundation License Version 2), "
        "https://docs.python.org/3/license.html",
        "# Made by scripts/make_corpus.py (deterministic; see its docstring). "
        f"{len(paras)} paragraphs from {n_files} files.",
    ]
    data = ("\n".join(header + paras) + "\n").encode("utf-8")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)
    words = sum(len(p.split()) for p in paras)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB compressed, "
        f"{len(data) / 1e6:.2f} MB text): {len(paras)} paragraphs, {words} words "
        f"from {n_files} files",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
