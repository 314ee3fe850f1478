"""From a checkpoint (or an ensemble of them) to answers: the predictor, test-time augmentation,
averaging members, the MLflow image-in model (`skin.serve.pyfunc`) and ONNX export.

May import: train and the floors below it.

`skin.serve.SkinModel` is the stable name of the image-in model: models logged from code
(`skin/serve/skin_model.py`) import it by this name, wherever the class itself lives.
"""

from typing import Any

__all__ = ["SkinModel"]


def __getattr__(name: str) -> Any:
    """`SkinModel` on first use, so importing the floor does not import MLflow."""
    if name == "SkinModel":
        from skin.serve.pyfunc import SkinModel  # MLflow is heavy: loaded only to log or serve

        return SkinModel
    raise AttributeError(f"module 'skin.serve' has no attribute {name!r}")
