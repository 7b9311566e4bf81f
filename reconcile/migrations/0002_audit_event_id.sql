-- The journal event id on audit rows, unique, so that replays are idempotent
-- (ON CONFLICT (event_id) DO NOTHING). Nullable: the orchestrator's own inserts, which
-- do not know it, keep working.
ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS event_id uuid;
CREATE UNIQUE INDEX IF NOT EXISTS audit_events_event_id ON audit_events (event_id);
