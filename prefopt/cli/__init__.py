"""Layer 9: the ``prefopt`` command line — argument parsing only (see :mod:`prefopt.cli.main`)."""

from prefopt.cli.main import main

__all__ = ["main"]
