"""Writing JSON without importing the :mod:`json` package.

``import json`` pulls in ``re`` and ``enum``, milliseconds that every process appending a
record would pay. The encoding is done by the same C encoder ``json.dumps`` uses; only the
package around it is skipped. Where that encoder is missing (not CPython) this falls back
to :func:`json.dumps`. Reading is :func:`journal._hit.parse_json`, on the C scanner.
"""

try:
    from _json import encode_basestring_ascii as _ascii
    from _json import make_encoder as _make_encoder
except ImportError:  # pragma: no cover - CPython always has it
    _native = False
else:
    _native = True


def _unserialisable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dump_json(value: object) -> str:
    """``json.dumps(value, separators=(",", ":"), allow_nan=False)``, byte for byte, by the
    same C encoder, without importing :mod:`json` (ASCII output; raises TypeError or
    ValueError for what ``json.dumps`` rejects)."""
    if not _native:  # pragma: no cover
        import json

        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    # Arguments as json.JSONEncoder passes them: markers (circular check), default,
    # string encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan.
    encoder = _make_encoder({}, _unserialisable, _ascii, None, ":", ",", False, False, False)
    return "".join(encoder(value, 0))
