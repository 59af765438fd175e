"""``python -m gradfilt cost ...``: see :mod:`gradfilt.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
