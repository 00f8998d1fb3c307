"""Allow ``python -m nanoxtal``."""

from __future__ import annotations

from nanoxtal.cli import main

raise SystemExit(main())
