"""The image-in model's code as MLflow logs it (models-from-code): MLflow copies this file into
the model and runs it to load the model, so nothing of ours is pickled.

It names one stable public name, `skin.serve.SkinModel`: a later move of the class needs only
that name kept for every model logged since to keep loading. Never imported by skin itself.
"""

import mlflow.models

from skin.serve import SkinModel

mlflow.models.set_model(SkinModel())
