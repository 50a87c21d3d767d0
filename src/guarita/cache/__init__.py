"""The response cache: the exact tier (``exact.py``) and the semantic tier."""
