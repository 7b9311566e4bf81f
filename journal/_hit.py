"""The hit path's read, kept apart so that it imports nothing beyond the standard library.

It returns raw records (plain dicts, see docs/formats.md) on purpose: building a
:class:`journal.Record` would import attrs, which costs more than the whole lookup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from journal._layout import JOURNAL_DIR, JOURNAL_SUFFIX, SNAPSHOT, list_files
from journal._scan import lookup


def journal_files(home: Path) -> list[Path]:
    """The journals under ``home/journal/``, finished and live."""
    return list_files(home / JOURNAL_DIR, JOURNAL_SUFFIX)


def latest(home: Path | str, key: str) -> dict[str, Any] | None:
    """The hit path's read: the latest raw record for ``key``, None if absent or forgotten.

    Reads the snapshot and the journals and decodes only lines that mention ``key``;
    returns a plain dict (see docs/formats.md) so that no class is imported.
    """
    home = Path(home)
    record = lookup([home / SNAPSHOT, *journal_files(home)], key)
    return None if record is None or record["data"] is None else record
