"""Resilience: deadlines, retries with a budget, circuit breakers, fallback chains and
load balancing across deployments, each a wrapper around the same provider interface."""
