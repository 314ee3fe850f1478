"""What a model is worth: the evaluate stage, reports and model cards, paired comparisons of two
models on the same images, and what a model trained on (provenance).

May import: serve and the floors below it.
"""
