"""genlab: train, evaluate and sample generative models."""

__version__ = "0.1.0"

from genlab.errors import GenlabError  # noqa: E402

__all__ = ["GenlabError", "__version__"]
