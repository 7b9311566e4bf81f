-- The orchestrator's tables, with the columns this tool reads and writes, for a database
-- of this tool's own only: the embedded default (`reconcile db up`), or
-- `reconcile db migrate --create-tables`. Never where an orchestrator creates them with
-- its own migrations: those would then fail on "relation already exists".
-- IF NOT EXISTS: tables found are left as they are (their columns are checked apart).
CREATE TABLE IF NOT EXISTS agents (
    id                  text PRIMARY KEY,
    custom_name         text,
    team                text,
    current_executor_id text
);

CREATE TABLE IF NOT EXISTS executors (
    id                text PRIMARY KEY,
    agent_id          text,
    claude_session_id text,
    state             text NOT NULL DEFAULT 'spawning' CHECK (state IN (
        'spawning', 'running', 'idle', 'working', 'permission', 'question',
        'done', 'error', 'terminated')),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- When the executor began, as the orchestrator's own column: a late settlement
    -- compares it with the observation's time (docs/architecture.md, "Late settlement").
    started_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS audit_events (
    id          bigserial PRIMARY KEY,
    entity_type text NOT NULL,
    entity_id   text NOT NULL,
    event_type  text NOT NULL,
    actor       text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    event_id    uuid
);
