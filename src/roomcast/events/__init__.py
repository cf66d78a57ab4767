"""Lifecycle events for a backend: schemas, signatures, outboxes and their delivery."""
