"""2-D maps of high-dimensional points: t-SNE (Barnes-Hut in C++) and model embedding maps."""

from .maps import EmbeddingMap, embed_hidden_states, embed_tokens, pool_hidden_states
from .tsne import TSNE

__all__ = ["TSNE", "EmbeddingMap", "embed_hidden_states", "embed_tokens", "pool_hidden_states"]
