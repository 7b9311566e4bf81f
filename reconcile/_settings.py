"""Settings: one frozen object, built once from the environment and command-line flags."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from reconcile._errors import ConfigError
from reconcile._fast import AGENT_MAX_AGE_S, NEGATIVE_TTL_S, default_home


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


def _env(name: str, parser: Callable[[str], Any]) -> dict[str, Any]:
    return {"metadata": {"env": name, "parser": parser}}


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{attribute.metadata['env']} must be positive, got {value}")


@attrs.frozen
class Settings:
    """Everything the engine, the compactor and the CLI need to know, made explicit.

    Build it with :meth:`from_env`; every field maps to one environment variable
    (documented in README.md), and flags override the environment.
    """

    home: Path = attrs.field(converter=Path)
    database_url: str | None = attrs.field(
        default=None, repr=lambda url: repr(redact_url(url)), **_env("RECONCILE_DATABASE_URL", str)
    )
    connect_timeout_s: float = attrs.field(
        default=1.0, validator=_positive, **_env("RECONCILE_CONNECT_TIMEOUT", float)
    )
    statement_timeout_s: float = attrs.field(
        default=2.0, validator=_positive, **_env("RECONCILE_STATEMENT_TIMEOUT", float)
    )
    max_entries: int = attrs.field(
        default=1000, validator=_positive, **_env("RECONCILE_MAX_ENTRIES", int)
    )
    agent_max_age_s: float = attrs.field(
        default=AGENT_MAX_AGE_S, validator=_positive, **_env("RECONCILE_AGENT_MAX_AGE", float)
    )
    negative_ttl_s: float = attrs.field(
        default=NEGATIVE_TTL_S, validator=_positive, **_env("RECONCILE_NEGATIVE_TTL", float)
    )
    backoff_max_s: float = attrs.field(
        default=30.0, validator=_positive, **_env("RECONCILE_BACKOFF_MAX", float)
    )
    retry_horizon_s: float = attrs.field(default=86400.0, **_env("RECONCILE_RETRY_HORIZON", float))
    sync: bool = attrs.field(default=False, **_env("RECONCILE_SYNC", _bool))
    linger_s: float = attrs.field(default=2.0, **_env("RECONCILE_LINGER", float))
    compact_threshold: int = attrs.field(
        default=64, validator=_positive, **_env("RECONCILE_COMPACT_THRESHOLD", int)
    )
    fsync: bool = attrs.field(default=True, **_env("RECONCILE_FSYNC", _bool))
    log_max_bytes: int = attrs.field(
        default=4 << 20, validator=_positive, **_env("RECONCILE_LOG_MAX_BYTES", int)
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``env`` (default ``os.environ``); ``overrides`` that are not None
        win. A malformed variable raises :class:`ConfigError` naming it."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {"home": default_home(env)}
        for field in attrs.fields(cls):
            name = field.metadata.get("env")
            if name is None or not env.get(name):
                continue
            try:
                values[field.name] = field.metadata["parser"](env[name])
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @staticmethod
    def variables() -> list[tuple[str, Any]]:
        """Every environment variable with its default, for documentation and ``status``."""
        rows: list[tuple[str, Any]] = [
            ("RECONCILE_HOME", "${XDG_STATE_HOME:-~/.local/state}/reconcile")
        ]
        for field in attrs.fields(Settings):
            if "env" in field.metadata:
                rows.append((field.metadata["env"], field.default))
        return rows


def redact_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***`` (URL or ``key=value`` form)."""
    if url is None:
        return None
    import re

    url = re.sub(r"(://[^:/@\s]*:)\S*@", r"\1***@", url)
    url = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url, flags=re.I)
    return url
