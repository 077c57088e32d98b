"""Tooling shared by tests/ and benchmarks/, never shipped: the product is charlm, sweeps
and analysis (pyproject's packages.find includes only those)."""
