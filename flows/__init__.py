"""Prefect flows: the full pipeline and one flow per stage, each returning a dataclass (`outcomes`)."""
