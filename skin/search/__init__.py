"""Looking for a better recipe: Optuna sweeps, lesion-grouped cross-validation folds and the
ensembles built from them.

May import: evaluate and the floors below it; not monitor or release (its siblings).
"""
