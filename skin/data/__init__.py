"""From a store of images to a versioned manifest: where a dataset lives (`location`), storage
(local or S3), listing, validation, the lesion-grouped split, undersampling, decoding and the
image cache, shards and generated datasets.

May import: base, stats, track.
"""
