"""A cron job that logs into the host's funnel: the first job to run starts it, the others join it.

    */5 * * * *  python3 /path/to/examples/host_funnel/cron_job.py

Every record goes to host.log (and the errors to errors.log) through the one listener, whichever
job, script or subprocess made it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import logfunnel

HERE = Path(__file__).resolve().parent


def main() -> None:
    handle = logfunnel.join_host_funnel(config=HERE / "host.toml")  # starts `logfunnel serve` if none runs
    logfunnel.install_worker_logging(handle)
    log = logging.getLogger("jobs.backup")
    log.info("backup started")
    logging.getLogger("jobs.chatty").info("never made: jobs.chatty is at WARNING in host.toml")
    # A plain subprocess joins through LOGFUNNEL_ADDRESS, which join_host_funnel set for it.
    subprocess.run([sys.executable, str(HERE / "child.py")], check=True)
    log.info("backup finished")


if __name__ == "__main__":
    main()
