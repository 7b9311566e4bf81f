-- The orchestrator's tables, as this tool needs them (DESIGN §8). IF NOT EXISTS: on an
-- orchestrator's own database these already exist and are left as they are.
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
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS audit_events (
    id          bigserial PRIMARY KEY,
    entity_type text NOT NULL,
    entity_id   text NOT NULL,
    event_type  text NOT NULL,
    actor       text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS agents_team_custom_name ON agents (team, custom_name);
CREATE INDEX IF NOT EXISTS audit_events_entity ON audit_events (entity_type, entity_id);
