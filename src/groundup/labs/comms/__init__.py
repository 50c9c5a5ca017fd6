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

The default run (3 seeds) is sized for ≤ 10 min on 2 quiet CPU cores. Estimated, not measured end to end
(the machine was shared while it was written): per seed, starting the 23 all-reduce processes ≈ 30 s
(importing torch and the lab, ≈ 2.5 CPU-s each), the all-reduces ≈ 15 s (64 MiB at 8 ranks ≈ 0.4 s a
call, 8 calls a size), the trainer at n = 1, 2, 4 ≈ 25 s, the plots ≈ 3 s: ≈ 1.2 min a seed, ≈ 4 min
in all, give or take 2. The --quick run took 43 s with the load average near 3.

    groundup lab comms                  # 3 seeds
    groundup lab comms --quick          # 1 seed, 2 and 4 ranks, small messages, DDP at 2 ranks
    groundup lab comms --report-from runs/comms/results.json --out DIR
"""

from groundup.labs.comms.lab import LAB, Settings, add_arguments, run, run_lab, run_seed

__all__ = ["LAB", "Settings", "add_arguments", "run", "run_lab", "run_seed"]
