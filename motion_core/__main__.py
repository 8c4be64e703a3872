"""``python -m motion_core`` -- see :mod:`motion_core.cli`."""

from .cli import main

raise SystemExit(main())
