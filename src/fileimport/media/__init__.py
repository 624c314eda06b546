"""The media library: one entry per (project, systemName, externalId)."""
