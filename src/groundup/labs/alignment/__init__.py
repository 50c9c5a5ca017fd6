"""The alignment lab: J(θ) = E[r_φ(x, y)] − β·KL(π_θ ‖ π_ref), built and measured end to end (issue #19).

  1. π_ref        a small char Shakespeare model the lab trains itself (seconds; no download), the same
                  for every seed
  2. preferences  pairs of π_ref continuations labelled by Bradley–Terry draws from the gold judge
                  (VADER sentiment; groundup.align.preferences); r_φ = π_ref's trunk + a scalar head
                  (groundup.model.reward) trained on them; held-out agreement with gold
  3. frontier     RL (REINFORCE with a leave-one-out baseline and the per-token KL penalty,
                  groundup.align.rl), DPO (groundup.train.align.dpo_step_loss) and best-of-n, each over
                  β (or n): proxy and gold reward against KL(π ‖ π_ref) on the policy's own samples
  4. over-opt.    gold vs proxy along RL training at the smallest β, and over best-of-n's n
  5. exact        continuations of 2 characters (V² of them): π* = π_ref·exp(r_φ/β)/Z by enumeration
                  (groundup.align.exact), its frontier, and each method's exact gap J(π*) − J
  6. π_ref's weights hashed before and after every method

lab.py runs it on the lab harness (every update through groundup.train.loop.fit), report.py turns
results.json into the verdicts, report.md and plots.

The default run is sized for ≤ 12 min on one core with 1 torch thread (estimated from timings of
its parts, see the report's wall time for the measured one).

    groundup lab alignment                  # 3 seeds
    groundup lab alignment --quick          # 1 seed, tiny models: under 2 minutes
    groundup lab alignment --report-from runs/alignment/results.json --out DIR
"""

from groundup.labs.alignment.lab import LAB, Settings, add_arguments, run, run_lab, run_seed

__all__ = ["LAB", "Settings", "add_arguments", "run", "run_lab", "run_seed"]
