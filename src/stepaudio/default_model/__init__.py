"""The default model: a small Step-Audio model assembled from pretrained parts shipped in PyPI packages.

See docs/DEFAULT_MODEL_ASSEMBLY.md for what the packages hold and how each part maps onto our names.
"""
