"""Statistics on arrays of labels and probabilities: metrics, bootstrap intervals, calibration,
operating points, slices and the abstention scores. No images, no models, no I/O.

May import: base.
"""
