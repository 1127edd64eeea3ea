"""``python -m rlkd.cli``: the ``rlkd`` command."""

from rlkd.cli import main

raise SystemExit(main())
