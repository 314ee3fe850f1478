"""Prefect flows: the full pipeline and one flow per stage."""
