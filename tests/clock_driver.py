"""Run `groundup ARGS` under torchrun with one rank's clock skewed: the driver behind
tests/test_regressions_train.py's time-budget test.

    GROUNDUP_TEST_FAST_CLOCK_RANK=1 torchrun --nproc_per_node=2 tests/clock_driver.py train ...

On the named rank time.perf_counter runs 10,000× fast, so by that rank's clock any time budget is
spent after a few milliseconds; the other ranks keep the real clock. Every rank dies by SIGALRM
after GROUNDUP_TEST_WATCHDOG_S seconds (default 60): ranks that fall out of step hang in a
collective, and the test must fail rather than wait for gloo's 30-minute timeout.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from groundup.cli import main

if __name__ == "__main__":
    signal.alarm(int(os.environ.get("GROUNDUP_TEST_WATCHDOG_S", "60")))
    rank = int(os.environ.get("RANK", "0"))
    if rank == int(os.environ.get("GROUNDUP_TEST_FAST_CLOCK_RANK", "-1")):
        real = time.perf_counter
        start = real()
        time.perf_counter = lambda: start + 10_000 * (real() - start)
        print(f"rank {rank}: fast clock (10,000x)", flush=True)
    raise SystemExit(main(sys.argv[1:]))
