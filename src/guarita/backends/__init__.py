"""Backends chosen by settings: task queues (and, with scale-out, key-value stores)."""
