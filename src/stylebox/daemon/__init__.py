"""The pipeline after the source: runner, outbox (and, with the daemon, journal and watcher)."""
