"""Settings: one frozen object, built once from the environment and command-line flags.

A malformed ``RECONCILE_*`` variable (not a number, or not positive where it must be) is
one of two things, by who reads it (docs/operations.md, "Settings"):

* for a command a person typed, an error naming the variable (:meth:`Settings.from_env`
  raises :class:`ConfigError`): the person is there to fix it;
* for the processes nobody watches (the hook, the reconciler it starts, its synchronous
  mode) and for the commands that diagnose (``status``, ``doctor``), the default, as the
  hook itself has always used (``from_env(..., ignore_malformed=True)``), with the
  variable reported (:meth:`Settings.malformed`: logged as ``settings.ignored``, shown by
  ``status`` and ``doctor``). A detached process that refused would leave every
  observation unsettled while the hook, which reads the same variables, carries on.
"""

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


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigError(f"{attribute.metadata['env']} must be 0 or more, got {value}")


@attrs.frozen
class Malformed:
    """A ``RECONCILE_*`` variable that cannot be used, and the default used instead."""

    variable: str
    value: str
    error: str
    default: Any

    def message(self) -> str:
        return (
            f"{self.variable}={self.value[:100]!r}: {self.error}; correct it, or unset it "
            f"for the default ({self.default})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "value": self.value[:100]}


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
        default=64, validator=_not_negative, **_env("RECONCILE_COMPACT_THRESHOLD", int)
    )
    fsync: bool = attrs.field(default=True, **_env("RECONCILE_FSYNC", _bool))
    log_max_bytes: int = attrs.field(
        default=4 << 20, validator=_positive, **_env("RECONCILE_LOG_MAX_BYTES", int)
    )
    # Where database_url came from, as messages name it: the flag when given, else the
    # variable (no variable of its own: from_env sets it).
    database_url_origin: str = attrs.field(default="RECONCILE_DATABASE_URL", repr=False)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        ignore_malformed: bool = False,
        **overrides: Any,
    ) -> Settings:
        """Settings from ``env`` (default ``os.environ``); ``overrides`` that are not None
        win. A malformed variable raises :class:`ConfigError` naming it, or with
        ``ignore_malformed`` takes its default (:meth:`malformed` lists those)."""
        env = os.environ if env is None else env
        values, malformed = cls._read(env)
        if malformed and not ignore_malformed:
            raise ConfigError(malformed[0].message())
        values["home"] = default_home(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("database_url") is not None:
            values["database_url_origin"] = "--database-url"
        return cls(**values)

    @classmethod
    def malformed(cls, env: Mapping[str, str] | None = None) -> list[Malformed]:
        """The variables of ``env`` that :meth:`from_env` refuses, in field order."""
        return cls._read(os.environ if env is None else env)[1]

    @classmethod
    def _read(cls, env: Mapping[str, str]) -> tuple[dict[str, Any], list[Malformed]]:
        values: dict[str, Any] = {}
        malformed: list[Malformed] = []
        for field in attrs.fields(cls):
            name = field.metadata.get("env")
            if name is None or not env.get(name):
                continue
            try:
                value = field.metadata["parser"](env[name])
                if field.validator is not None:
                    field.validator(None, field, value)
            except (ValueError, ConfigError) as exc:
                error = str(exc).removeprefix(f"{name} ")
                malformed.append(Malformed(name, env[name], error, field.default))
                continue
            values[field.name] = value
        return values, malformed

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
