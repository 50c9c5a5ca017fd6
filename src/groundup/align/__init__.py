"""Alignment as an optimisation (issue #19): tune a policy π_θ, initialised from a reference
π_ref, to maximise

    J(θ) = E_{x, y ~ π_θ(·|x)} [ r(x, y) ]  −  β · KL( π_θ(·|x) ‖ π_ref(·|x) )

with the pieces built on this project's own models:

    runs.py         shared run-directory helpers: load π_ref, hash its weights, sample, prompts
    gold.py         the gold judge that plays the human (lexicon sentiment of the continuation)
    preferences.py  preference pairs from π_ref, labels drawn by Bradley–Terry from the gold scores
    reward.py       a reward model r_φ trained on the pairs: −log σ(r_w − r_l)
    dpo.py          Direct Preference Optimisation (Rafailov et al. 2023) on the same pairs
    rl.py, kl.py    policy gradient with a per-token KL penalty (Ziegler et al. 2019); KL estimators
    best_of_n.py    the baseline: keep the best of n samples from π_ref (KL = log n − (n − 1)/n)
    exact.py        the exact optimum π* ∝ π_ref · exp(r/β) on an enumerable setting

Every weight update goes through groundup.train.step.train_step: each method is a loss
(groundup.train.align, groundup.train.policy), not a new loop.
"""
