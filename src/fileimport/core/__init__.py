"""Shared plumbing: settings, database, storage, fetching, logging."""
