"""``python -m nodeagent``: the command line (:func:`nodeagent.cli.main.main`)."""

from nodeagent.cli.main import main

raise SystemExit(main())
