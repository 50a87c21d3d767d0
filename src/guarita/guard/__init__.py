"""Guardrails: input sanitisation, injection detection, PII, generated-code scanning."""
