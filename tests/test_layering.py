"""Dependencies point one way (docs/architecture.md): each package of groundup may import only from
the layers below it, and imports sit at the top of modules, where a reader sees them (the CLI alone
imports lazily, to start fast). The imports are read from the source, so no edge can hide."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "groundup"

# Top to bottom. A module may import from its own package and from any layer below its own.
LAYERS = [
    {"__main__"},
    {"cli"},
    {"serve", "demo"},
    {"labs", "cost", "distill"},
    {"align"},  # below labs: the alignment lab is built on it (align imports sample and below)
    {"sample", "interop", "supervise"},
    {"quantize"},
    {"train"},
    {"engines"},
    {"model"},
    {"kernels"},
    {"data"},
    {"tokenizer"},
    {"accounting", "report", "cluster"},
    {"config", "util", "hardware"},
    {"errors"},
]
LAZY_IMPORTS_ALLOWED = {"cli", "__main__"}  # start-up time: `groundup --help` must not import torch


def rank(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"groundup.{package} is in no layer of tests/test_layering.py; add it where it belongs "
                         "(and to docs/architecture.md)")


def package_of(module: str) -> str:
    """'groundup.train.step' → 'train'; 'groundup' itself → '' (the root package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def project_imports(path: Path):
    """(imported module, line, inside a function?) for every groundup import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from groundup import kernels` imports groundup.kernels
            targets = [f"{node.module}.{a.name}" for a in node.names] if node.module == "groundup" else [node.module]
        else:
            continue
        for target in targets:
            if target == "groundup" or target.startswith("groundup."):
                yield target, node.lineno, id(node) in nested


def modules():
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        yield path, relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem


def test_every_import_points_down():
    wrong = []
    for path, package in modules():
        if package == "__init__":
            continue  # the root package's docstring module imports nothing
        for target, line, _ in project_imports(path):
            other = package_of(target)
            if other and other != package and rank(other) <= rank(package):
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {target} "
                             f"({package} must not depend on {other}: it is not below it)")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_project_imports_sit_at_the_top_of_modules():
    hidden = [f"{path.relative_to(SRC)}:{line} imports {target} inside a function"
              for path, package in modules() if package not in LAZY_IMPORTS_ALLOWED
              for target, line, nested in project_imports(path) if nested]
    assert not hidden, "move these imports to the top of their module:\n" + "\n".join(hidden)


@pytest.mark.parametrize("source, expected", [
    ("from groundup.train.step import train_step\n", "groundup.train.step"),
    ("from groundup import kernels\n", "groundup.kernels"),
    ("def f():\n    import groundup.labs\n", "groundup.labs"),
])
def test_the_reader_sees_every_form_of_import(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [t for t, _, _ in project_imports(path)] == [expected]


def test_a_wrong_edge_is_caught(monkeypatch, tmp_path):
    """The probe can fail: a model module that imports the trainer is reported."""
    fake = tmp_path / "groundup"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "gpt.py").write_text("from groundup.train.trainer import train\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    with pytest.raises(AssertionError, match="model must not depend on train"):
        test_every_import_points_down()
