"""Every model family genlab has; importing this package registers them (genlab.config.registry).

Order matters only for listings: presets and tasks appear in this order."""

from genlab.config import family_of_args
from genlab.families import deepseek, density, detection, diffusion, lm, posttrain  # noqa: F401 - each registers itself


def build_lm(args, vocab_size: int, max_len: int = 2048, causal: bool = True):
    """A language model from the model section of any LM family (lm, deepseek)."""
    family = family_of_args(args)
    if family.build_model is None:
        raise ValueError(f"{family.name} models are not language models")
    return family.build_model(args, vocab_size, max_len, causal)
