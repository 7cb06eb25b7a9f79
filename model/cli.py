"""What the command-line tools share: argparse types for counts, and one-line errors for the
mistakes a user makes (a missing file, a broken checkpoint, an unknown dataset) instead of a
traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from model.checkpoint import CheckpointError


class CliError(Exception):
    """A usage mistake found after parsing (an unknown dataset, ...): one line, exit 2."""


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"count >= {minimum}"
    return parse


positive, non_negative = count(1), count(0)


def run(main: Callable[[], object], prog: str) -> None:
    """`main()`, with the user's mistakes as `prog: error: ...` and exit 2."""
    try:
        main()
    except (CheckpointError, CliError, FileNotFoundError, NotADirectoryError,
            PermissionError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
