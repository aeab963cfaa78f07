"""Runnable benchmarks: ``python -m tracker.bench <subcommand>`` prints figures (tests never time)."""
