"""Logs, metrics, prices: what Guarita tells its operators."""
