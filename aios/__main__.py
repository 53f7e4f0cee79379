"""``python -m aios``: the ``aios`` command."""

from aios.ops.cli import main

main()
