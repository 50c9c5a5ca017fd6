"""The failures lab: what failures cost a training run, and which silent corruptions go unseen.

  1. projection  Goodput against cluster size from groundup.cluster's first-order model, failure rate
                 calibrated on Llama 3 (419 unexpected interruptions in 54 days on 16,384 H100s),
                 checkpointing at Young's interval τ = √(2δM), stated checkpoint and restart times.
  2. validation  A small model trained under `groundup supervise`, SIGKILLed at Poisson times and
                 restarted with --resume; measured goodput against the model's prediction for the
                 measured failure rate, checkpoint write time and restart time.
  3. sdc         Silent data corruption: one flipped bit (sign, exponent or mantissa) of a weight or
                 a gradient (`--inject bitflip@STEP:weight|grad`); which the training guards catch,
                 which a fixed-batch loss probe and a parameter checksum catch, how fast, and the
                 harm of those nobody catches.

projection.py, validation.py and sdc.py hold the parts, lab.py runs them per seed on the harness,
report.py turns results.json into verdicts, report.md and plots.

    groundup lab failures                  # 3 seeds by default, about 4 min on the 2-core machine (6 seeds: 9 min)
    groundup lab failures --quick          # 1 seed, one supervised run, few flips (< 2 min)
    groundup lab failures --report-from runs/failures/results.json --out DIR
"""

from groundup.labs.failures.lab import LAB, VERSION, Settings, add_arguments, run, run_lab, run_seed

__all__ = ["LAB", "VERSION", "Settings", "add_arguments", "run", "run_lab", "run_seed"]
