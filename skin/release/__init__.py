"""Promotion: registering a model version and the paired gate that decides whether it becomes champion.

May import: evaluate and the floors below it; not search or monitor (its siblings).
"""
