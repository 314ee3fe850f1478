"""The one seam to MLflow: runs, artifacts, the model registry's client and model references.

Nothing else in skin imports mlflow at import time (the pyfunc in `skin.serve` aside). May import: base.
"""
