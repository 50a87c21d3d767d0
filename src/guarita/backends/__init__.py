"""Backends chosen by settings: task queues, Redis-held sessions and connection."""
