"""L-BFGS run on many independent problems at once (one row of `x` per problem).

Chinchilla's approach 3 minimises a 5-parameter objective from a grid of thousands of starts,
and the bootstrap repeats that for every resample. Each start is an independent problem, so
here they advance together as tensors: the two-loop recursion, the Armijo backtracking and the
convergence test all work row by row. `torch.optim.LBFGS` solves one problem at a time and is
the reference the tests compare against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _value_and_grad(fn, x):
    x = x.detach().requires_grad_(True)
    f = fn(x)  # (S,)
    (g,) = torch.autograd.grad(f.sum(), x)  # rows are independent, so this is each row's gradient
    return f.detach(), g.detach()


def batched_lbfgs(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    max_iter: int = 300,
    history: int = 10,
    tol_grad: float = 1e-12,
    tol_change: float = 1e-13,
    c1: float = 1e-4,
    max_backtracks: int = 40,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise fn row by row. fn: (S, P) -> (S,) with row i depending on x[i] only.

    A row stops when its largest gradient entry is below tol_grad, when a step lowers its value by
    less than tol_change relative to the value itself (relative, because objectives such as a sum
    of Huber losses on log-loss residuals live near 1e-6), or when its line search fails.
    Returns (x, f): the final points (S, P) and their objective values (S,)."""
    x = x0.detach().clone()
    S, P = x.shape
    f, g = _value_and_grad(fn, x)
    s_hist = torch.zeros(history, S, P, dtype=x.dtype)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(history, S, dtype=x.dtype)  # 0 = empty slot or rejected pair: a no-op below
    gamma = torch.ones(S, dtype=x.dtype)  # initial inverse-Hessian scale s.y / y.y
    active = torch.ones(S, dtype=torch.bool)
    for it in range(max_iter):
        active &= g.abs().amax(1) > tol_grad
        if not active.any():
            break
        # two-loop recursion, newest pair first: d = -H g            (S, P)
        q = g.clone()
        alphas = []
        for k in range(history):
            i = (it - 1 - k) % history
            a = rho[i] * (s_hist[i] * q).sum(1)
            q -= a[:, None] * y_hist[i]
            alphas.append((i, a))
        r = gamma[:, None] * q
        for i, a in reversed(alphas):
            b = rho[i] * (y_hist[i] * r).sum(1)
            r += s_hist[i] * (a - b)[:, None]
        d = -r
        slope = (g * d).sum(1)
        bad = slope >= 0  # not a descent direction: fall back to steepest descent
        d[bad] = -g[bad]
        slope = (g * d).sum(1)
        # backtracking (Armijo); the first iteration starts with a step of unit length
        t = torch.ones(S, dtype=x.dtype)
        if it == 0:
            t = torch.clamp(1.0 / g.abs().sum(1).clamp_min(1e-300), max=1.0)
        accepted = ~active
        x_new, f_new = x.clone(), f.clone()
        for _ in range(max_backtracks):
            trial = x + t[:, None] * d
            f_trial = fn(trial).detach()
            ok = ~accepted & torch.isfinite(f_trial) & (f_trial <= f + c1 * t * slope)
            x_new[ok], f_new[ok] = trial[ok], f_trial[ok]
            accepted |= ok
            if accepted.all():
                break
            t = torch.where(accepted, t, t * 0.5)
        moved = accepted & active
        moved &= f_new < f  # rows whose line search failed stay put (and stop below)
        _, g_new = _value_and_grad(fn, x_new)
        s = x_new - x
        y = g_new - g
        sy = (s * y).sum(1)
        # keep the pair only with clearly positive curvature, relative to the sizes of s and y
        # (an absolute threshold would drop every pair of an objective that is tiny everywhere)
        keep = moved & (sy > 1e-10 * s.norm(dim=1) * y.norm(dim=1))
        slot = it % history
        s_hist[slot], y_hist[slot] = s, y
        rho[slot] = torch.where(keep, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        gamma = torch.where(keep, sy / (y * y).sum(1).clamp_min(1e-300), gamma)
        change = (f - f_new).abs()
        x = torch.where(moved[:, None], x_new, x)
        g = torch.where(moved[:, None], g_new, g)
        f = torch.where(moved, f_new, f)
        active &= moved & (change > tol_change * f.abs())
    return x, f
