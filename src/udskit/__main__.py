"""`python -m udskit` runs the command line."""

from udskit.cli import run

run()
