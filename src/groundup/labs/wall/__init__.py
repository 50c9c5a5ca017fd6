"""The wall lab: does 10× the capability cost 20–40× the money?

Composes the scaling lab's fitted law (docs/labs/results/scaling.json) with groundup.cluster's
model of a cluster (MFU at scale, exposed all-reduce, failures and restarts) to compute the money
multiplier of a capability step under stated assumptions, with intervals from the fit's seeds and
bootstrap samples. model.py holds the arithmetic, lab.py runs it on the harness, report.py writes
the verdicts, report.md and plots from results.json alone.

    groundup lab wall                      # seconds: nothing is trained
    groundup lab wall --report-from runs/wall/results.json --out DIR
"""

from groundup.labs.wall.lab import LAB, VERSION, add_arguments, run, run_lab

__all__ = ["LAB", "VERSION", "add_arguments", "run", "run_lab"]
