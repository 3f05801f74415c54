"""Selective recomputation of cheap results, the mechanism behind the `selective` activation-
checkpointing policy (genlab.train.activation_checkpoint).

Model code wraps cheap work in `cheap(fn, *args)`: norms, activations, RoPE, the concatenations and
padding that assemble attention's q, k, v, the MoE router's affinities (their (T, E) sigmoid output is
saved by sigmoid itself, so it stays), MLA's up-projections. Inside
a `SelectiveScope` (one block's forward), a saved-tensor hook (torch.autograd.graph.saved_tensors_hooks)
replaces every tensor autograd saves for backward that lives in the storage of such a result by a
recipe: fn, its args (packed the same way, so recipes nest) and the saved view's geometry. Backward
calls fn again under no_grad and takes the same view of the new result. Everything else is saved as
usual, and no op runs under a dispatch mode.

Rules for `cheap` functions: deterministic (no RNG), and their tensor inputs are not changed in place
before backward (checked: raises). Outside a scope, `cheap(fn, *args)` is fn(*args).
"""

from __future__ import annotations

import threading

import torch


class _Entry:
    """A cheap result registered during a block's forward: how to rebuild the storage of output
    `index` of fn(*args, **kwargs). out is held only until the block's forward ends."""

    __slots__ = ("out", "out_version", "layout", "fn", "args", "kwargs", "index", "versions", "cache", "pending", "amp")

    def __init__(self, out, fn, args, kwargs, index):
        self.out, self.fn, self.args, self.kwargs, self.index = out, fn, args, kwargs, index
        self.out_version = out._version
        self.layout = (out.shape, out.stride(), out.storage_offset(), out.dtype)
        # the autocast state fn ran under, for the rebuild (backward runs outside the forward's autocast)
        dev = out.device.type
        self.amp = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        self.versions = [a._version if isinstance(a, torch.Tensor) else None for a in args]
        self.cache, self.pending = None, 0


class _Recipe:
    """What the pack hook stores instead of a saved tensor: its entry (with args packed the same
    way) and the saved tensor's own view geometry inside the entry's output storage."""

    __slots__ = ("entry", "args", "geometry")

    def __init__(self, entry, args, geometry):
        self.entry, self.args, self.geometry = entry, args, geometry


_state = threading.local()  # .registry: {storage pointer: _Entry} while a selective block runs


def cheap(fn, *args, **kwargs):
    """fn(*args, **kwargs), marked as cheap to recompute. Under the `selective` policy, tensors that
    autograd saves from the storage of a (tensor) output of this call are rebuilt in backward by
    calling fn again instead of being kept. Outputs that share storage with an input (views) are
    not registered. Tensor arguments must be positional. Elsewhere this is just the call."""
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        raise TypeError("cheap(): pass tensors positionally (they are packed and version-checked)")
    out = fn(*args, **kwargs)
    reg = getattr(_state, "registry", None)
    if reg is None or not torch.is_grad_enabled():
        return out
    taken = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
    for i, o in enumerate(out if isinstance(out, tuple) else (out,)):
        if isinstance(o, torch.Tensor) and o.device.type != "meta":
            ptr = o.untyped_storage().data_ptr()
            if ptr and ptr not in taken and ptr not in reg:
                reg[ptr] = _Entry(o, fn, args, kwargs, i if isinstance(out, tuple) else None)
    return out


def _pack(t):
    reg = getattr(_state, "registry", None)
    e = reg.get(t.untyped_storage().data_ptr()) if reg else None
    if e is None or e.out._version != e.out_version:
        return t
    e.pending += 1
    args = tuple(_pack(a) if isinstance(a, torch.Tensor) else a for a in e.args)
    return _Recipe(e, args, (t.shape, t.stride(), t.storage_offset()))


def _release(r: _Recipe, deep: bool = False) -> None:
    """One user of r's entry is done: drop the cached result after the last. deep: r was not
    unpacked (its entry's result was cached), so its nested recipes are done too."""
    e = r.entry
    e.pending -= 1
    if e.pending <= 0:
        e.cache = None
    if deep:
        for a in r.args:
            if isinstance(a, _Recipe):
                _release(a, True)


def _unpack(r):
    if not isinstance(r, _Recipe):
        return r
    e = r.entry
    out = e.cache
    if out is not None:  # rebuilt already for another saved view of the same storage
        for a in r.args:
            if isinstance(a, _Recipe):
                _release(a, True)
    else:
        for a, v in zip(r.args, e.versions):
            if isinstance(a, torch.Tensor) and a._version != v:
                raise RuntimeError(
                    "selective activation checkpointing: an input of a recomputed result was "
                    "modified in place after the forward pass"
                )
        args = [_unpack(a) for a in r.args]
        dev, amp_on, amp_dtype = e.amp
        with torch.no_grad(), torch.autocast(dev, dtype=amp_dtype, enabled=amp_on):
            out = e.fn(*args, **e.kwargs)
        out = out if e.index is None else out[e.index]
        if (out.shape, out.stride(), out.storage_offset(), out.dtype) != e.layout:
            raise RuntimeError(
                f"selective activation checkpointing: {getattr(e.fn, '__name__', e.fn)} "
                "recomputed a result with another memory layout or dtype"
            )
        e.cache = out
    _release(r)
    return out.as_strided(*r.geometry)


class SelectiveScope:
    """The pack/unpack hooks plus a fresh registry for one block's forward."""

    def __enter__(self):
        self.prev = getattr(_state, "registry", None)
        _state.registry = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        for e in _state.registry.values():
            # neither the results nor their raw inputs are kept past the block: recipes hold their
            # own packed args (a cheap input of a cheap result is itself a recipe, not a tensor)
            e.out = e.args = None
        _state.registry = self.prev
        return False
