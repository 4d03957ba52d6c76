"""Curation: a folder of personal videos -> scored, filtered, captioned clips and a manifest.

Talks to ``hv_tune`` only through the manifest format (docs/manifest.md).
"""
