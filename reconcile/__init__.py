"""reconcile: keep executors.claude_session_id in step with live Claude Code sessions."""

from __future__ import annotations

__all__: list[str] = []
