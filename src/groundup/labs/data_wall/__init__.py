"""The data-wall lab: what repeated and synthetic data are worth, measured (issue #21, part 1).

  1. repetition   at a fixed token budget D, unique data vs U = D/E unique tokens for E = 2 … 40
                  epochs; Muennighoff et al. 2023's effective data D' = U + U·R*·(1 − e^(−R/R*))
                  (R = E − 1) fitted with a loss-vs-unique-data law L(D) = E + B/D^β; R* with a
                  two-level bootstrap interval and an identifiability (recovery) check
  2. synthetic    generation 0 trains on real text, generation g on text sampled from g − 1:
                  replace vs accumulate (vs a fresh-real control); held-out real loss, the tail
                  (rare-token loss, the samples' mass on the real unigram tail) and distinct n-grams

effective.py holds the fit (NumPy, on labs/fit.py), probes.py the tail and diversity measures,
lab.py trains the models (through groundup.train.loop.fit) on the lab harness, report.py turns
results.json into the verdicts, report.md and plots.

    groundup lab data-wall                  # 3 seeds, ~10 minutes on one core
    groundup lab data-wall --quick          # 1 seed, tiny models
    groundup lab data-wall --report-from runs/data-wall/results.json --out DIR
"""

from groundup.labs.data_wall.lab import LAB, Settings, add_arguments, run, run_lab, run_seed

__all__ = ["LAB", "Settings", "add_arguments", "run", "run_lab", "run_seed"]
