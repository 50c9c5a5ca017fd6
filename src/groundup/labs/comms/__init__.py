"""The comms lab: what talking between GPUs costs, measured here and projected to clusters (issue #21).

  1. all-reduce   time of a gloo all-reduce over loopback against message size (4 KiB … 64 MiB) and
                  the number of processes (2, 3, 4, 6, 8); the ring model t = α + β·S·2(n − 1)/n
                  fitted per n and jointly, α and the bus bandwidth 1/β with intervals over seeds,
                  the misfit of every point. With more ranks than cores the CPU is oversubscribed:
                  the report shows what that does to the fit.
  2. DDP          the step time of our trainer (groundup.train.trainer.train → fit → train_step)
                  under DDP at n = 2 and 4, predicted from the fit (the model's gradient bytes) plus
                  the step time measured at n = 1 with the same per-rank batch; the prediction error.
  3. projection   groundup.cluster at cluster scale: a 7B and a 70B model on 8 … 16,384 H100s at a
                  stated MFU, DDP (all-reduce) or FSDP (all-gather ×2 + reduce-scatter), NVLink
                  inside a node, InfiniBand across nodes: step time and scaling efficiency.

measure.py starts the ranks (spawned processes with torchrun's environment) and times; fit.py is
the α–β fit; project.py the projection; lab.py runs it on the harness; report.py turns results.json
into the verdicts, report.md and plots.

The default run is sized for ≤ 10 min on 2 quiet CPU cores (estimated from runs under load: all-reduce
≈ 1 min per seed, the three trainer runs ≈ 40 s per seed, the process start-ups included): 3 seeds.

    groundup lab comms                  # 3 seeds
    groundup lab comms --quick          # 1 seed, 2 and 4 ranks, small messages, DDP at 2 ranks
    groundup lab comms --report-from runs/comms/results.json --out DIR
"""

from groundup.labs.comms.lab import LAB, Settings, add_arguments, run, run_lab, run_seed

__all__ = ["LAB", "Settings", "add_arguments", "run", "run_lab", "run_seed"]
