"""Generation jobs: ids, a queue, progress, cancellation (see base.JobBackend)."""
