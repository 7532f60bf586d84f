"""``python -m fewstep``: the same command line as the ``fewstep`` console script (:func:`fewstep.cli.main`)."""

from .cli import main

main()
