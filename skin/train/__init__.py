"""From a manifest to a checkpoint: the timm model and its weights, datasets and feeds, augmentation
on the device, the training loop, checkpoints, DDP and the train stage.

May import: data and the floors below it.
"""
