"""Prefect tasks: thin wrappers over the skin library."""
