"""booru-embed: embeddings of Danbooru tag sets, Hugging Face native."""

__version__ = "0.1.0"
__all__ = ["BooruEmbedder", "__version__"]


def __getattr__(name: str):
    """Import the heavy high-level API (torch, transformers) only when it is asked for."""
    if name == "BooruEmbedder":
        from .embedder import BooruEmbedder

        return BooruEmbedder
    raise AttributeError(f"module 'booru_embed' has no attribute {name!r}")
