"""Projects: the tenant every token, job and media entry belongs to."""
