"""skin: a tracked transfer-learning pipeline for ISIC 2019 dermoscopy images."""

__version__ = "0.1.0"
