"""Argument types shared by the command-line parsers (labpgt/cli.py and the subcommands' own)."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number of 1 or more, or a parser error saying what is allowed."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give 1 or more")
    return value
