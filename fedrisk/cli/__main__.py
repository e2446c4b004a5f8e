"""``python -m fedrisk.cli``: the ``fedrisk`` command, for processes started with the current interpreter."""

from fedrisk.cli import main

main()
