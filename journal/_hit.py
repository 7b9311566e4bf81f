"""The hit path's read, kept apart so that it imports nothing beyond the standard library.

It returns raw records (plain dicts, see docs/formats.md) on purpose: building a
:class:`journal.Record` would import attrs, which costs more than the whole lookup.
"""

from __future__ import annotations

import os

from journal._layout import JOURNAL_DIR, JOURNAL_SUFFIX, SNAPSHOT, list_files
from journal._scan import lookup

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    from typing import Any

    from journal._layout import StrPath


def journal_files(home: StrPath) -> list[str]:
    """The journals under ``home/journal/``, finished and live."""
    return list_files(os.path.join(home, JOURNAL_DIR), JOURNAL_SUFFIX)


def latest(home: StrPath, key: str) -> dict[str, Any] | None:
    """The hit path's read: the latest raw record for ``key``, None if absent or forgotten.

    Reads the snapshot and the journals and decodes only lines that mention ``key``;
    returns a plain dict (see docs/formats.md) so that no class is imported.
    """
    if os.path.islink(home):  # refused, as everywhere in the state directory
        return None
    record = lookup([os.path.join(home, SNAPSHOT), *journal_files(home)], key)
    return None if record is None or record["data"] is None else record
