"""The ops layer: prompt registry, quality scorers, consistency, rollouts (shadow, canary,
the change-type decision matrix) and, next, drift, SLOs and the review queue.

Pure decision functions (given samples, a verdict) live apart from the services that
collect samples and act, so that the statistics are tested on synthetic data and the
services end to end with real models.
"""
