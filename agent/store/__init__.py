"""The SQLite store: outbox, persistent agent state, dead letters."""
