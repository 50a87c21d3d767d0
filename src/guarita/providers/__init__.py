"""Providers: who we talk to for a model, behind one small protocol (see ``base``)."""
