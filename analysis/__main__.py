"""``python -m analysis RESULTS_DIR --out REPORT_DIR``: see analysis.cli."""

from analysis.cli import main

raise SystemExit(main())
