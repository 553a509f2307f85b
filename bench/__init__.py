"""Performance benchmarks: ``python -m bench`` (``make bench``) prints each one's figures.

Every benchmark module exposes ``run() -> list[Section]``; :mod:`bench.__main__` keeps the
registry of them and prints one table per module, each figure next to its target.
"""

from bench.report import DataMissingError, Row, Section, format_table, realdata_dir

__all__ = ["DataMissingError", "Row", "Section", "format_table", "realdata_dir"]
