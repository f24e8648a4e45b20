"""pytest plugin (a ``pytest11`` entry point): the ``funnel`` fixture, records from child processes."""
