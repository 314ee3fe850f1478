"""Where `SkinModel` lived before the floors: models logged until 2026-12 were pickled against this path.

MLflow unpickles a logged python_model by its module path, so this name must keep importing for as
long as such models sit in users' registries (tests/serve/test_logged_models.py loads one).
"""

from skin.serve.pyfunc import SkinModel

__all__ = ["SkinModel"]
