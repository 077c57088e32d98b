"""``python -m analysis RESULTS_DIR --out REPORT_DIR``: see analysis.report."""

from analysis.report import main

raise SystemExit(main())
