"""``python -m learner``: see learner/cli.py."""

from learner.cli import main

raise SystemExit(main())
