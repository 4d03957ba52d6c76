"""Data path: cache format (written by `cache`), the cached dataset and batch order."""
