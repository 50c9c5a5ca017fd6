"""The MoE lab: what a mixture-of-experts layer buys, measured (issue #17).

  1. same compute   dense vs MoE at equal active FLOPs per token (E = 8, k = 2, expert width = dense
                    width / 2), two sizes: validation loss per step, per FLOP and per second
  2. balance        load per expert over training with and without the balance loss; router
                    entropy; dropped assignments vs capacity factor (trained routers)
  3. specialisation Shakespeare + Python source with a domain label per token: the share of each
                    domain's tokens per expert and I(expert; domain) against a shuffled-label null
  4. k and E        top-1/2/4 (E = 8) and E = 4/8/16 (k = 2) at fixed active compute
  5. cost           parameter memory and tokens/s vs dense of equal active and equal total parameters

probes.py holds the routing measures (pure NumPy), mixed.py the labelled mixed corpus, lab.py trains
the models (through groundup.train.loop.fit) on the lab harness, report.py turns results.json into
the verdicts, report.md and plots.

    groundup lab moe                  # 3 seeds
    groundup lab moe --quick          # 1 seed, tiny models
    groundup lab moe --report-from runs/moe/results.json --out DIR
"""

from groundup.labs.moe.lab import LAB, Settings, add_arguments, run, run_lab, run_seed

__all__ = ["LAB", "Settings", "add_arguments", "run", "run_lab", "run_seed"]
