"""Isolation zone: the only code that talks to the container engine, plus the trusted evaluator."""
