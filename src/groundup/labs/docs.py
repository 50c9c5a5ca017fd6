"""docs/labs/<lab>.md and their plots, regenerated from the committed results files.

    python -m groundup.labs.docs            # what `make docs` runs
    python -m groundup.labs.docs --out DIR  # into another directory (the test compares the two)

Each page is the lab's report(results) under a header line naming its source; nothing on it is
typed by hand. A lab whose docs/labs/results/<lab>.json is missing, or was written by another
version of the lab than the code's (module VERSION), is skipped (and said so).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from groundup.labs import harness

# lab name → (module with report() and plots(), page name under docs/labs/)
LABS = {
    "memory": ("groundup.labs.memory.report", "memory.md"),
    "scaling": ("groundup.labs.scaling", "scaling.md"),
    "attention-cost": ("groundup.labs.attention_cost", "attention-cost.md"),
    "geometry": ("groundup.labs.geometry.report", "geometry.md"),
    "moe": ("groundup.labs.moe.report", "moe.md"),
    "efficiency": ("groundup.labs.efficiency.report", "efficiency.md"),
    "comms": ("groundup.labs.comms.report", "comms.md"),
    "wall": ("groundup.labs.wall.report", "wall.md"),
    "data-wall": ("groundup.labs.data_wall.report", "data-wall.md"),
    "failures": ("groundup.labs.failures.report", "failures.md"),
    "alignment": ("groundup.labs.alignment.report", "alignment.md"),
}
DOCS = Path("docs/labs")


def regenerate_docs(results_dir: Path = DOCS / "results", out: Path = DOCS, labs=tuple(LABS)) -> list[Path]:
    """Every lab's page and plots from results_dir/<lab>.json into `out`. Returns the pages written."""
    written = []
    for lab in labs:
        module_name, page = LABS[lab]
        source = Path(results_dir) / f"{lab}.json"
        if not source.exists():
            print(f"skipped {lab}: no {source}")
            continue
        results = harness.load_results(source, lab)
        module = importlib.import_module(module_name)
        version = getattr(module, "VERSION", None)
        if version is not None and results.get("lab_version") != version:
            print(f"skipped {lab}: {source} was written by lab version {results.get('lab_version')}, the lab is at "
                  f"version {version}; rerun the lab and commit its results.json there")
            continue
        header = harness.doc_header(f"docs/labs/results/{lab}.json", lab)
        written.append(harness.regenerate(module, results, out, page, header))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate docs/labs from the committed results files.")
    parser.add_argument("--results", default=str(DOCS / "results"), help="where the <lab>.json results files are")
    parser.add_argument("--out", default=str(DOCS), help="where the pages and plots go (default docs/labs)")
    args = parser.parse_args(argv)
    for path in regenerate_docs(Path(args.results), Path(args.out)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
