"""Where Claude Code keeps a session's transcript: the payload's fields, and its naming.

A leaf (it imports nothing): the outbox journals :func:`transcript_fields` with an
observation, the reconciler carries them on into the outcome, and ``reconcile verify
--transcripts`` (:mod:`reconcile._transcripts`) finds a session's transcript from them,
or, for a record without them, from :func:`project_dir_name` (docs/transcripts.md).
Nothing here runs on the hook's hit path: only a hook that journals an observation
imports this module.
"""

TRANSCRIPT_PATH = "transcript_path"
CWD = "cwd"
FIELDS = (TRANSCRIPT_PATH, CWD)
DROPPED = "dropped"  # the record's note of a field the hook was given and did not keep
# Bytes (UTF-8) of one path kept in a record. A record line is at most 4096 bytes with
# its identity and session id (up to 256 characters each), so two paths of this size fit
# when they are ASCII; a record that does not fit is journaled without them, noted.
MAX_PATH_BYTES = 1024
MAX_DIR_NAME = 200  # Claude Code's cut of a project directory's name, then a hash


def path_problem(value: object) -> str | None:
    """Why ``value`` is not a path a record keeps, or None: an absolute path, UTF-8, no
    NUL, at most :data:`MAX_PATH_BYTES` bytes."""
    if not isinstance(value, str):
        return "not a string"
    if not value.startswith("/"):
        return "not an absolute path"
    if "\x00" in value:
        return "contains NUL"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "not UTF-8"
    if size > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    return None


def transcript_fields(payload: object) -> dict[str, object]:
    """The payload's ``transcript_path`` and ``cwd`` as an observation keeps them: each
    one present and valid as is, each one present and invalid named under ``dropped``
    with the reason (never its value); an empty dict when the payload has neither."""
    if not isinstance(payload, dict):
        return {}
    kept: dict[str, object] = {}
    dropped: dict[str, str] = {}
    for field in FIELDS:
        value = payload.get(field)
        if value is None or value == "":
            continue
        problem = path_problem(value)
        if problem is None:
            kept[field] = value
        else:
            dropped[field] = problem
    if dropped:
        kept[DROPPED] = dropped
    return kept


def carried(data: object) -> dict[str, object]:
    """What of a record's transcript fields an outcome repeats: the valid ones, and the
    note of the dropped ones (a record written by anything but the hook is checked
    again)."""
    if not isinstance(data, dict):
        return {}
    kept: dict[str, object] = {f: data[f] for f in FIELDS if path_problem(data.get(f)) is None}
    note = data.get(DROPPED)
    if isinstance(note, dict) and note:
        kept[DROPPED] = {str(k)[:32]: str(v)[:64] for k, v in list(note.items())[:4]}
    return kept


def without(data: dict[str, object], why: str) -> dict[str, object]:
    """``data`` without its paths, each one named under ``dropped`` with ``why``."""
    note = dict(data.get(DROPPED) or {})  # type: ignore[call-overload]
    for field in FIELDS:
        if field in data:
            note[field] = why
    rest = {k: v for k, v in data.items() if k not in FIELDS and k != DROPPED}
    if note:
        rest[DROPPED] = note
    return rest


def project_dir_name(cwd: str) -> str:
    """The name Claude Code gives the project directory of a working directory: every
    UTF-16 code unit other than an ASCII letter or digit replaced by ``-`` (so a
    character outside the BMP becomes two); past 200, the first 200 and ``-`` and the
    base-36 absolute value of the Java-style string hash of ``cwd``."""
    units: list[str] = []
    for char in cwd:
        if char.isascii() and char.isalnum():
            units.append(char)
        else:
            units.append("--" if ord(char) > 0xFFFF else "-")
    name = "".join(units)
    if len(name) <= MAX_DIR_NAME:
        return name
    return f"{name[:MAX_DIR_NAME]}-{_base36(abs(_string_hash(cwd)))}"


def _string_hash(text: str) -> int:
    """``h = h * 31 + unit`` over the UTF-16 code units, as a signed 32-bit integer."""
    value = 0
    raw = text.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(raw), 2):
        value = (value * 31 + (raw[i] | raw[i + 1] << 8)) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out
