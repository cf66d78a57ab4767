"""Compatibility path of the command line (``python -m roomcast.cli``): ``roomcast.serve.cli``."""

from roomcast.serve.cli import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
