"""Logging: to the journal with structured fields under systemd, else to stderr.

No timestamps of our own either way: journald adds them, and a foreground process's output
is the developer's terminal.  systemd-python is optional (the ``kvmppc[journal]`` extra, or
Debian's python3-systemd): it has no wheels and builds only against libsystemd, so a plain
``pip install kvmppc`` goes without it.  Under systemd without it (a minimal install, a
ppc64le test guest) stderr lines carry sd-daemon(3) ``<N>`` priority prefixes, which
journald, capturing the service's stderr, turns into the entry's priority.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from kvmppc.daemon.sd import journal_stream_is_stderr

_SD_PRIORITY = {  # sd-daemon.h SD_ERR ... SD_DEBUG
    logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7,
}


class _PriorityPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SD_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def setup_logging(level: str, environ: Mapping[str, str] = os.environ,
                  stream: TextIO | None = None) -> str:
    """Configure the ``kvmppc`` loggers; returns where logs go: ``journal`` or ``stderr``."""
    logger = logging.getLogger("kvmppc")
    logger.setLevel(level.upper())
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    under_systemd = journal_stream_is_stderr(environ) or "INVOCATION_ID" in environ
    if under_systemd:
        try:
            # systemd-python is optional (kvmppc[journal]; absent in the ppc64le test guest and
            # after a plain pip install): import it only here.
            from systemd.journal import JournalHandler  # noqa: PLC0415 - optional, see above
        except ImportError:
            pass  # systemd-python is optional: fall back to prefixed stderr lines below
        else:
            logger.addHandler(JournalHandler(SYSLOG_IDENTIFIER="kvmppc"))
            return "journal"
    handler = logging.StreamHandler(stream or sys.stderr)
    if under_systemd:
        handler.setFormatter(_PriorityPrefixFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("kvmppc: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    return "stderr"
