"""genlab: train, evaluate and sample generative models."""

__version__ = "0.1.0"

from genlab.errors import GenlabError  # noqa: E402

__all__ = ["GenlabError", "__version__", "from_pretrained"]


def from_pretrained(path):
    """(model, tokenizer) from a genlab run dir or a Hugging Face directory (see genlab.interop.hf)."""
    from genlab.interop.hf import from_pretrained as _load

    return _load(path)
