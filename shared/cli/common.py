"""What every command module shares: the (add, run) pair a command is, and progress on stderr."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

AddCommand = Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
RunCommand = Callable[[argparse.Namespace], int]
Command = tuple[AddCommand, RunCommand]


def progress(message: str) -> None:
    """Progress for long steps goes to stderr, so stdout stays clean for data and reports."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
