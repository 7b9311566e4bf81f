"""A database shaped like an orchestrator's (genie's), for the tests that run beside one.

Written from the orchestrator's documented facts, not from its code: its own migration
runner and table (``_genie_migrations``), each migration a plain ``CREATE TABLE`` (no
``IF NOT EXISTS``) in a transaction of its own; ``executors.agent_id``, ``provider`` and
``transport`` NOT NULL; ``agents.started_at`` NOT NULL with no default;
``agents.current_executor_id`` referencing executors; its own indexes on
``audit_events (entity_type, entity_id)`` and ``agents (custom_name, team)``; triggers
on insert into ``audit_events``. Rows are inserted the way its registry inserts them,
and the environment is the one it gives the Claude Code processes it spawns.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_core",
        """
        CREATE TABLE audit_events (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            entity_type text NOT NULL,
            entity_id   text NOT NULL,
            event_type  text NOT NULL,
            actor       text,
            details     jsonb DEFAULT '{}',
            created_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX idx_audit_entity ON audit_events (entity_type, entity_id);
        CREATE INDEX idx_audit_created ON audit_events (created_at);
        """,
    ),
    (
        "002_agents",
        """
        CREATE TABLE agents (
            id          text PRIMARY KEY,
            custom_name text,
            team        text,
            role        text,
            started_at  timestamptz NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE UNIQUE INDEX idx_agents_custom_name_team ON agents (custom_name, team)
            WHERE custom_name IS NOT NULL AND team IS NOT NULL;
        """,
    ),
    (
        "003_executors",
        """
        CREATE TABLE executors (
            id                text PRIMARY KEY,
            agent_id          text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
            provider          text NOT NULL,
            transport         text NOT NULL CHECK (transport IN ('tmux', 'api', 'process')),
            pid               integer,
            claude_session_id text,
            state             text NOT NULL DEFAULT 'spawning' CHECK (state IN (
                'spawning', 'running', 'idle', 'working', 'permission', 'question',
                'done', 'error', 'terminated')),
            started_at        timestamptz NOT NULL DEFAULT now(),
            ended_at          timestamptz,
            created_at        timestamptz NOT NULL DEFAULT now(),
            updated_at        timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE agents ADD COLUMN current_executor_id text
            REFERENCES executors (id) ON DELETE SET NULL;
        CREATE TABLE assignments (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            executor_id text NOT NULL REFERENCES executors (id) ON DELETE CASCADE,
            started_at  timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        "004_triggers",
        """
        CREATE TABLE audit_feed (audit_id bigint NOT NULL, event_type text NOT NULL);
        CREATE FUNCTION feed_audit_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('orchestrator_audit', NEW.id::text);
            INSERT INTO audit_feed VALUES (NEW.id, NEW.event_type);
            RETURN NEW;
        END $$;
        CREATE TRIGGER trg_feed_audit_event AFTER INSERT ON audit_events
            FOR EACH ROW EXECUTE FUNCTION feed_audit_event();
        CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END $$;
        CREATE TRIGGER trg_executors_updated_at BEFORE UPDATE ON executors
            FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
        """,
    ),
]


def orchestrator_migrate(url: str) -> list[str]:
    """Run the orchestrator's migrations as its runner does; return those applied.
    Raises the first failing migration's error (later ones do not run)."""
    applied = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _genie_migrations (id serial PRIMARY KEY, "
            "name text UNIQUE NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM _genie_migrations")}
        for name, script in MIGRATIONS:
            if name in done:
                continue
            with conn.transaction():
                conn.execute(script)
                conn.execute("INSERT INTO _genie_migrations (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied


def spawn_worker(
    url: str,
    name: str,
    team: str,
    *,
    session_id: str | None = None,
    state: str = "running",
    agent_id: str | None = None,
) -> dict[str, str]:
    """Register an agent and spawn its executor as the orchestrator does; return the
    environment it gives the worker's Claude Code process."""
    agent = agent_id or str(uuid.uuid4())
    executor = str(uuid.uuid4())
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO agents (id, custom_name, team, role, started_at) "
            "VALUES (%s, %s, %s, 'worker', now()) ON CONFLICT (id) DO NOTHING",
            (agent, name, team),
        )
        conn.execute(
            "INSERT INTO executors (id, agent_id, provider, transport, claude_session_id, "
            "state) VALUES (%s, %s, 'claude', 'tmux', %s, %s)",
            (executor, agent, session_id, state),
        )
        conn.execute("INSERT INTO assignments (executor_id) VALUES (%s)", (executor,))
        conn.execute("UPDATE agents SET current_executor_id = %s WHERE id = %s", (executor, agent))
    return {
        "GENIE_WORKER": "1",
        "GENIE_AGENT_NAME": name,
        "GENIE_TEAM": team,
        "GENIE_EXECUTOR_ID": executor,
        "GENIE_AGENT_ID": agent,
    }


def spawn_team_lead(
    url: str, name: str, team: str, *, session_id: str | None = None, state: str = "running"
) -> tuple[str, dict[str, str]]:
    """A team lead: registered like a worker, but its process gets only the team and
    its name. Returns (executor id, environment)."""
    env = spawn_worker(url, name, team, session_id=session_id, state=state)
    return env["GENIE_EXECUTOR_ID"], {"GENIE_TEAM": team, "GENIE_AGENT_NAME": name}


def rows(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()
