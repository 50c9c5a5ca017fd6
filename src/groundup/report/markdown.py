"""The short Markdown report every lab writes next to its results.json and plots."""

from __future__ import annotations

import os
from pathlib import Path

from groundup.util.files import atomic_write_text


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats printed with 4 significant digits."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: str | os.PathLike, title: str, sections: list[tuple[str, str]]) -> Path:
    """`sections`: (heading, Markdown body) pairs, written in order under a title."""
    parts = [f"# {title}\n"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{body.strip()}\n")
    return atomic_write_text(path, "\n".join(parts))
