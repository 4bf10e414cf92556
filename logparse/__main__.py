"""`python -m logparse FILE ...`: see logparse/cli.py and docs/logparse.md."""
import sys

from logparse.cli import run

sys.exit(run())
