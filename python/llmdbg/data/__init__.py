"""Look at the data a model learns from: token frequencies, lengths and truncation, label balance,
duplicates (with conflicting labels) and unknown tokens. The counting runs in the C++ core."""

from .profiling import DataProfile, profile

__all__ = ["DataProfile", "profile"]
