"""`python -m coz_train.compat [--versions NAME==VERSION ...] [--venv PATH] [--reuse] [--only CHECK ...] [--out FILE]`."""

from coz_train.compat.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
