"""`python -m groundup …` — the same CLI as the console script (torchrun launches it this way)."""

from groundup.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
