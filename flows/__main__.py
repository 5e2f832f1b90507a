import sys

from flows.cli import entry

sys.exit(entry())
