"""The base floor: the typed config, the class labels, run folders, progress bars and chart setup.

Everything above may import it; it imports no other floor of skin.
"""
