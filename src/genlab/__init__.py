"""genlab: train, evaluate and sample generative models."""

__version__ = "0.1.0"

from genlab.errors import GenlabError  # noqa: E402

__all__ = ["GenlabError", "__version__", "from_pretrained"]


def from_pretrained(path, device="auto", dtype=None):
    """A language model from a genlab run dir or a Hugging Face directory, as a
    genlab.interop.pretrained.Pretrained: `.generate(prompt or ids, ...)`, `.tokenizer`,
    `.save_pretrained(dir, format="genlab" | "hf")`, `model(ids)` -> (batch, seq, vocab) logits, the packed
    form as `.model` / `.forward_packed`. device: auto (cuda when available) | cpu | cuda | cuda:N;
    dtype: None (fp32) or a torch dtype. Unpacking still gives the old pair: `model, tok = from_pretrained(p)`."""
    from genlab.interop.pretrained import from_pretrained as _load

    return _load(path, device=device, dtype=dtype)
