"""A plain `subprocess` child joins through LOGFUNNEL_ADDRESS, which the running listener sets.

Run: python examples/subprocess_child.py
"""

import logging
import subprocess
import sys

import logfunnel

CHILD = """
import logging, logfunnel
logfunnel.install_worker_logging()          # finds the listener in the environment
logging.getLogger("example.subprocess").info("hello from a subprocess")
"""

if __name__ == "__main__":
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(process)d %(name)s: %(message)s"))
    with logfunnel.start_listener(handlers=[handler]) as listener:
        subprocess.run([sys.executable, "-c", CHILD], check=True)
    print(listener.stats()["received"], "records")
