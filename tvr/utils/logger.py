"""Logging setup for training/evaluation runs.

Rank 0 logs INFO and above to the console and to ``output_dir/log.txt`` (appended, so a resumed
run continues the same file); other ranks log only WARNING and above, to the console, so a
multi-process run prints each progress line once.  Library modules just use
``logging.getLogger(__name__)`` (names under ``tvr``); ``setup_logging`` attaches the handlers to
the ``tvr`` logger and the entry point's logger (``__main__`` / ``main``), and to the root logger so
that libraries' warnings (open_clip, timm) reach the console and ``log.txt`` too. Without a root
handler, a library calling ``logging.warning`` would make Python install its own default console
handler, and from then on every line of ours would be printed twice.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Iterable, Mapping, Optional

__all__ = ["LOG_FORMAT", "setup_logging", "log_args", "drop_earlier_log_lines"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_MARK = "_tvr_handler"  # attribute set on handlers we own, so a second call can replace them


class _ConsoleHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` through ``tqdm.write`` when tqdm is available, so log
    lines do not break a progress bar on the same terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a requirement
                sys.stderr.write(msg + "\n")
            else:
                tqdm.write(msg, file=sys.stderr)
            sys.stderr.flush()
        except Exception:  # logging must never crash the run
            self.handleError(record)


class _LibraryRecords(logging.Handler):
    """On the root logger: hands the records of other libraries (open_clip, timm) to our handlers.
    Our own loggers' records also propagate here, but our handlers already wrote them: skipped."""

    def __init__(self, targets: list, names: Iterable[str]) -> None:
        super().__init__()
        self.targets = targets
        self.ours = tuple(names)
        self.ours_prefixes = tuple(n + "." for n in self.ours)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name in self.ours or record.name.startswith(self.ours_prefixes):
            return
        for h in self.targets:
            if record.levelno >= h.level:
                h.handle(record)


def _root_prints_to_console() -> bool:
    streams = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return any(isinstance(h, logging.StreamHandler) and not getattr(h, _MARK, False)
               and getattr(h, "stream", None) in streams for h in logging.getLogger().handlers)


def setup_logging(output_dir: Optional[str], rank: int = 0,
                  names: Iterable[str] = ("tvr", "__main__", "main")) -> logging.Logger:
    """Configure the loggers ``names`` (default: ``tvr``, ``__main__`` and ``main``).

    rank 0: level INFO, console + ``output_dir/log.txt`` (folder created; no file when
    ``output_dir`` is None).  Other ranks: level WARNING, console only.
    Idempotent: handlers added by an earlier call are closed and replaced, never duplicated.
    Records still propagate to the root logger (so pytest's ``caplog`` and other root handlers see
    them and a later test is not affected by an earlier in-process run); to avoid printing every
    line twice, no console handler is added when the root logger already writes to
    ``sys.stderr``/``sys.stdout`` (e.g. after ``logging.basicConfig``).  Returns the logger named
    first in ``names`` (``tvr``).
    """
    names = list(names)
    formatter = logging.Formatter(LOG_FORMAT, datefmt=_DATE_FORMAT)
    level = logging.INFO if rank == 0 else logging.WARNING

    handlers = []
    if not _root_prints_to_console():
        console = _ConsoleHandler(level)
        console.setFormatter(formatter)
        handlers.append(console)
    if rank == 0 and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "log.txt")
        open_before = _our_file_handler(path, names[0])  # a second call keeps the first call's start
        if open_before is not None:
            start = open_before.run_start
        else:
            start = os.path.getsize(path) if os.path.exists(path) else 0
        file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        file_handler.run_start = start  # where this process's lines begin (earlier runs' lines come first)
        file_handler.setLevel(level)
        file_handler.setFormatter(formatter)
        handlers.append(file_handler)
    libraries = _LibraryRecords(handlers, names)  # the root logger's (its level, WARNING, is left alone)
    for h in handlers + [libraries]:
        setattr(h, _MARK, True)

    for name, mine in [(n, handlers) for n in names] + [(None, [libraries])]:
        lg = logging.getLogger(name)
        for old in [h for h in lg.handlers if getattr(h, _MARK, False)]:
            lg.removeHandler(old)
            old.close()
        for h in mine:  # the same handler objects are shared, so log.txt is opened once
            lg.addHandler(h)
        if name is not None:
            lg.setLevel(level)
    return logging.getLogger(names[0])


def _our_file_handler(path: str, name: str = "tvr") -> Optional[logging.FileHandler]:
    path = os.path.abspath(path)
    return next((h for h in logging.getLogger(name).handlers if getattr(h, _MARK, False)
                 and isinstance(h, logging.FileHandler) and h.baseFilename == path), None)


def drop_earlier_log_lines(output_dir: str) -> None:
    """Keep only this process's lines in ``output_dir/log.txt`` (``--overwrite``).

    The previous run's log is dropped only once the new run has passed its start-up checks, so a run
    stopped by a bad flag loses nothing; until then this run's lines are appended after the old ones."""
    from .checkpoint import atomic_write  # checkpoint imports torch; the logger itself stays light

    path = os.path.join(output_dir, "log.txt")
    handler = _our_file_handler(path)
    if handler is None or handler.run_start == 0:
        return
    with handler.lock:
        handler.flush()
        with open(path, "rb") as f:
            f.seek(handler.run_start)
            ours = f.read()
        atomic_write(path, lambda f: f.write(ours))
        handler.setStream(open(path, "a", encoding="utf-8")).close()  # the old stream points at the old file
        handler.run_start = 0


def log_args(args: Any, logger: Optional[logging.Logger] = None) -> None:
    """Log every effective argument, sorted by name, one ``  name: value`` line each.

    ``args``: an argparse Namespace (or any object with ``__dict__``) or a mapping.
    """
    logger = logger or logging.getLogger("tvr.args")
    items: Mapping[str, Any] = args if isinstance(args, Mapping) else vars(args)
    logger.info("Effective arguments:")
    for key in sorted(items):
        logger.info("  %s: %s", key, items[key])
