"""Watching the data after release: drift checks of new images against a model's training data.

May import: evaluate and the floors below it; not search or release (its siblings).
"""
