"""Runnable examples: ``python -m mme.examples.rcbd``."""
