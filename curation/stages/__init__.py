"""Curation stages: each maps clip records to clip records (docs/curation.md), in-process or on Ray Data."""
