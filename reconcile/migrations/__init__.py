"""SQL shipped with the package: ``tables.sql``, the orchestrator's tables for a database
of this tool's own (``reconcile db migrate --create-tables``, ``reconcile db up``).
Everything else is checked and repaired step by step by :mod:`reconcile._schema`."""
