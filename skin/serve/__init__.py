"""From a checkpoint (or an ensemble of them) to answers: the predictor, test-time augmentation,
averaging members, the MLflow image-in model (`skin.serve.pyfunc`) and ONNX export.

May import: train and the floors below it.
"""
