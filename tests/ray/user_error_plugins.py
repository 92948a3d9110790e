"""Plugins that fail on purpose, loaded by dotted path in tests of how failures are reported."""

from __future__ import annotations


class BrokenDataSource:
    """A data source whose construction fails with a bug (not a user mistake): the run must show a traceback."""

    def __init__(self, args):
        raise RuntimeError("the data source broke")
