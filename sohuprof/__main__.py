"""``python -m sohuprof``: the command line."""

from sohuprof.cli import main

main()
