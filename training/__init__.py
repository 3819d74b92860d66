"""Training: the workspace that owns a run, its logger and checkpoint bookkeeping."""
