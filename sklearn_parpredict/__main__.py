"""``python -m sklearn_parpredict``: the command line."""

from sklearn_parpredict._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
