"""The one seam to MLflow: runs, artifacts, the model registry's client and model references
(`refs`: every form a model is named by, parsed once, without MLflow).

Nothing else in skin imports mlflow at import time (the pyfunc in `skin.serve` aside). May import: base.
"""
