"""The efficiency lab: what quantization and distillation cost in quality and buy in size and speed.

  1. frontier        A model trained with the shipped BPE recipe (fewer steps) and a larger one,
                     quantized weight-only: bits {8, 4} × method {RTN, GPTQ} × group size {32, 64, 128}
                     (4-bit) → Δ validation loss, weight bytes, batch-1 decode tokens/s. RTN is
                     deterministic; GPTQ varies with its calibration windows, drawn once per seed.
  2. distillation    A student with ≥ 8× fewer parameters than the teacher, trained from scratch and
                     distilled (forward KL at T ∈ {1, 2, 4}, reverse KL, sequence-level) on the same
                     steps and batch size; figure of merit: the share of the teacher–scratch gap closed.
  3. distil+quantize The teacher, the scratch student and a distilled student at fp32, int8 and int4:
                     validation loss against weight bytes.

lab.py trains everything through groundup.train.loop.fit (the teacher and the larger model once per
run, the students once per seed), methods.py is the one place the quantizer and the distillation
loss are called, measures.py holds the figures of merit, report.py turns results.json into the
verdicts, report.md and plots.

The default run is sized for ≤ 20 min on 2 quiet CPU cores with 1 torch thread. Estimated, not
measured end to end: training steps timed at load 0.1 (shipped recipe 0.14 s/step, student
0.04 s/step), the rest timed under load and scaled by the student step's slow-down (≈ 3×):
the two models ≈ 5 min (500 steps each; the 4×256 model ≈ 0.45 s/step by its FLOPs), students
≈ 2.7 min per seed (the four KL students ≈ 0.13 s/step with the teacher's forward pass;
scratch and sequence-level ≈ 10 s each plus ≈ 12 s of teacher sampling), the frontier ≈ 1.2 min
per seed (16 quantizations, 10 of them GPTQ, each scored on the validation batches): ≈ 17 min
with 3 seeds, give or take 3. Over budget: --large-steps / --student-steps lower it.

    groundup lab efficiency                  # 3 seeds
    groundup lab efficiency --quick          # 1 seed, tiny models
    groundup lab efficiency --report-from runs/efficiency/results.json --out DIR
"""

from groundup.labs.efficiency.lab import LAB, Settings, add_arguments, run, run_lab, run_seed

__all__ = ["LAB", "Settings", "add_arguments", "run", "run_lab", "run_seed"]
