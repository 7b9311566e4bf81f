"""Parsing JSON on the hit path without importing the :mod:`json` package.

``import json`` pulls in ``re`` and ``enum``: about 4 ms of a hook fork whose whole
budget is a few milliseconds (docs/performance.md). The parsing itself is done by the
same C scanner ``json.loads`` uses; only the package around it is skipped. Where that
scanner is missing (not CPython) this falls back to :func:`json.loads`.
"""

from __future__ import annotations

_WHITESPACE = " \t\n\r"


class _NotJSONError(ValueError):
    """A number JSON (RFC 8259) has no value for: NaN, Infinity, or beyond a float."""


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0:  # inf or nan
        raise _NotJSONError(f"{text[:40]} is beyond a float")
    return value


class _Context:
    """What the C scanner reads from a ``json.JSONDecoder``: ``loads``'s defaults, but
    strict about numbers. A record whose data held NaN or 1e999 would be read, and then
    could never be written again (the encoder refuses them): such a line is rejected here,
    as not JSON, and quarantined like any other."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = staticmethod(_finite)
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise _NotJSONError(f"{name} is not JSON")


try:
    from _json import encode_basestring_ascii as _ascii
    from _json import make_encoder as _make_encoder
    from _json import make_scanner as _make_scanner
except ImportError:  # pragma: no cover - CPython always has it
    _scan = _encode = None
else:
    _scan = _make_scanner(_Context())  # type: ignore[arg-type]  # duck-typed JSONDecoder


def _unserialisable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dump_json(value: object) -> str:
    """``json.dumps(value, separators=(",", ":"), allow_nan=False)``, byte for byte, by the
    same C encoder, without importing :mod:`json` (ASCII output; raises TypeError or
    ValueError for what ``json.dumps`` rejects)."""
    if _scan is None:  # pragma: no cover
        import json

        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    # Arguments as json.JSONEncoder passes them: markers (circular check), default,
    # string encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan.
    encoder = _make_encoder({}, _unserialisable, _ascii, None, ":", ",", False, False, False)
    return "".join(encoder(value, 0))


def parse_json(data: bytes | str) -> object:
    """Like :func:`json.loads` on UTF-8 (or str) input; raises ValueError if invalid."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError("not a JSON document") from None
    except _NotJSONError:
        raise
    except (ValueError, SystemError):
        # Malformed input. The scanner builds its error from json.decoder, and without
        # that module loaded (3.11) it fails with SystemError: let json explain instead.
        import json

        return json.loads(text)
    if text[end:].strip(_WHITESPACE):
        raise ValueError("extra data after the JSON document")
    return value
