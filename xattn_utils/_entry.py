"""The old ``python -m xattn_utils.<step>.<module>`` entry points: one parser per subcommand, shared with the CLI."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable


def module_main(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                command: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """Parse ``argv`` with the subcommand's own ``add_arguments``, log at INFO (as ``xattn`` does by default) and
    run its ``command``; the same options and output as the ``xattn`` subcommand."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return command(args)
