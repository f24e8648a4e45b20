"""A subprocess of a job: it finds the host's funnel through LOGFUNNEL_ADDRESS and LOGFUNNEL_AUTHKEY."""

from __future__ import annotations

import logging

import logfunnel

if __name__ == "__main__":
    logfunnel.install_worker_logging()
    log = logging.getLogger("jobs.backup.compress")
    log.info("compressed 3 files")
    try:
        int("3 files")
    except ValueError:
        log.exception("one file could not be compressed")
