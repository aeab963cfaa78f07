"""Takes: the crash-safe recording (``python -m tracker.takes recover``) and its exports (``python -m tracker.export``)."""
