"""Shared machinery below every feature: one thread resolver, one progress helper, one model-input
normaliser, one eval-mode policy, pooling and html helpers. Nothing here imports a feature."""
