"""Prefect flows. Importing this package sets Prefect defaults this project relies on."""

import logging
import os
from contextlib import contextmanager

# Offline machines: never try to send usage analytics. Users can still override these.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Show lib/'s log lines (encoder load report, cache rebuilds, skipped files) in Prefect run logs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "lib")
# ... and keep lib/ quiet about the API when it is used outside a flow run (tests, notebooks).
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Prefect gives extra loggers its handlers but not a level: lib's INFO lines (which variant trains
# how many parameters, trunk cache used or why not, resuming from) fell below the root's WARNING.
if logging.getLogger("lib").level == logging.NOTSET:
    logging.getLogger("lib").setLevel(logging.INFO)

# why 120 s: docs/decisions.md, "A 120 s start timeout for Prefect's temporary server"
EPHEMERAL_STARTUP_TIMEOUT_SECONDS = 120


class ServerStartTimeout(RuntimeError):
    """The temporary Prefect API server did not start in time; the message says what to set."""


@contextmanager
def prefect_server_defaults():
    """Run flows with a longer ephemeral-server start-up timeout, and a one-line error if it still times out."""
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    with temporary_settings(
        set_defaults={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_STARTUP_TIMEOUT_SECONDS}
    ) as settings:
        try:
            yield
        except RuntimeError as error:
            if "Timed out while attempting to connect to ephemeral Prefect API server" not in str(error):
                raise
            raise ServerStartTimeout(
                "the temporary Prefect server did not start within "
                f"{settings.server.ephemeral.startup_timeout_seconds} s (a busy machine?): set "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=300, or start a server once (prefect server start) "
                "and export PREFECT_API_URL=http://127.0.0.1:4200/api"
            ) from error
