"""The geometry lab: what positions, attention heads and embeddings look like, measured.

  1. positions   Sinusoidal positions turn a shift by k into one fixed linear map M_k (a rotation by
                 k·ω_i per frequency), and PE(p)·PE(q) depends only on q − p. Built from the formula,
                 applied at every pos and k in float64; a random (learned-at-init) table is the control.
  2. heads       Attention heads of small trained character models, classified by measured scores
                 (previous-token, induction, first-token sink; Olsson et al. 2022) at checkpoints over
                 training, beside the scores uniform attention gets by chance.
  3. embeddings  A BPE model's token embeddings after training: nearest neighbours, a PCA projection,
                 and whether a token's nearest neighbour is used like it (same surface class, similar
                 next-token distribution) more often than a random token is.

positions.py, heads.py and embeddings.py hold the measurements, lab.py trains the models (through
groundup.train.loop.fit) and runs everything once per seed on the lab harness, report.py turns
results.json into the verdicts, report.md and plots.

    groundup lab geometry                  # 3 seeds
    groundup lab geometry --quick          # 1 seed, tiny models
    groundup lab geometry --report-from runs/geometry/results.json --out DIR
"""

from groundup.labs.geometry.lab import LAB, Settings, add_arguments, run, run_lab, run_seed

__all__ = ["LAB", "Settings", "add_arguments", "run", "run_lab", "run_seed"]
