"""Integrations with the frameworks that fork: each module imports its framework only inside itself.

``logfunnel.integrations.gunicorn`` (a gunicorn config file's hooks) and
``logfunnel.integrations.celery`` (``install(app)``); the pytest fixture lives in
``logfunnel.pytest_plugin``. Importing this package imports none of the frameworks.
"""
