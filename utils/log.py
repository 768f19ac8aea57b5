"""Logging set-up, done once by a CLI; library modules only call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging
import sys

_seen_messages: set[str] = set()


def setup_logging(rank: int = -1, verbose: bool = True) -> None:
    """Send INFO (or WARNING if not verbose) to stdout on rank 0 / single process; other ranks log errors only."""
    level = logging.INFO if verbose and rank in (-1, 0) else logging.WARNING if rank in (-1, 0) else logging.ERROR
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_cbbl_handler", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._cbbl_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def log_once(logger: logging.Logger, level: int, message: str, *args: object) -> None:
    """Log a message the first time it is seen (per process): for per-batch or per-file warnings."""
    key = f"{logger.name}:{message % args if args else message}"
    if key in _seen_messages:
        return
    _seen_messages.add(key)
    logger.log(level, message, *args)
