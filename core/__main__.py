"""``python -m core <command>``: the command-line face of the tool."""

from core.cli import main

raise SystemExit(main())
