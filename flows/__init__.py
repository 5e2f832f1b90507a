"""Prefect flows. Importing this package sets Prefect defaults this project relies on."""

import logging
import os

# Offline machines: never try to send usage analytics. Users can still override these.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# No progress bars from model loading and saving or datasets: one log line per epoch says the progress (the
# Trainer's bar over the steps is --progress: ASTFT_PROGRESS_BARS). Read when transformers is imported.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Show lib/'s log lines (encoder load report, cache rebuilds, skipped files) in Prefect run logs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "lib")
# ... and keep lib/ quiet about the API when it is used outside a flow run (tests, notebooks).
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Prefect gives extra loggers its handlers but not a level: lib's INFO lines (which variant trains
# how many parameters, trunk cache used or why not, resuming from) fell below the root's WARNING.
if logging.getLogger("lib").level == logging.NOTSET:
    logging.getLogger("lib").setLevel(logging.INFO)
