"""The HTTP surface: OpenAI-compatible ``/v1``, the agent and task API, health and metrics."""
