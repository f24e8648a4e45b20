"""gunicorn configuration: every worker's records, and gunicorn's own lines, through one log manager.

Run from this folder: ``gunicorn -c gunicorn.conf.py app:app``. The manager process owns the handlers
below (and gunicorn's own: ``errorlog``, ``accesslog``); the workers send it their records.
"""

from logfunnel.integrations.gunicorn import *  # noqa: F403  (the hooks gunicorn looks for)

bind = "127.0.0.1:8000"
workers = 2
max_requests = 50  # recycled workers lose nothing
accesslog = "access.log"  # gunicorn's access lines, written by the manager
errorlog = "-"  # gunicorn's own lines on stderr, written by the manager

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"format": "%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s"}},
    "handlers": {
        "app": {
            "class": "logging.handlers.RotatingFileHandler",  # rotated by one process: safe
            "filename": "app.log",
            "maxBytes": 10_000_000,
            "backupCount": 5,
            "formatter": "line",
        },
    },
    # gunicorn updates its own defaults with this dict key by key, so "root" and "loggers" are needed:
    # its defaults for them name handlers ("console", "error_console") that "handlers" above replaced.
    # Leaving gunicorn.error and gunicorn.access out of "loggers" keeps errorlog and accesslog.
    "root": {"level": "INFO", "handlers": ["app"]},
    "loggers": {},
}
