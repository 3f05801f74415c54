"""Published scaling laws, as numbers and the few formulas that use them.

Sources (see shared/reference/scaling-laws.md): DeepSeek LLM (arXiv:2401.02954) Eq. 1 and Eq. 4;
Hoffmann et al. 2022 (Chinchilla) approach 3, unrounded constants; Besiroglu et al. 2024 (Epoch)
refit of approach 3.

Every allocation law here is a pair of power laws in the compute budget C (FLOPs):
    size_opt = k_size * C^a      (FLOPs per token, in the law's own accounting)
    D_opt    = k_D * C^b         (training tokens), with size_opt * D_opt = C (up to rounding).
DeepSeek's size is M (non-embedding FLOPs/token incl. attention, C = M*D); Chinchilla's is 6N
with N all parameters (C = 6ND), which genlab matches with 6*N2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from genlab.errors import GenlabError

# DeepSeek LLM Eq. 1: hyper-parameters from the budget alone; B in tokens.
ETA_COEF, ETA_EXP = 0.3118, -0.1250
BATCH_COEF, BATCH_EXP = 0.2920, 0.3271
HPARAM_FIT_RANGE = (1e17, 2e19)  # budgets the hyper-parameter law was fitted on
NEAR_OPTIMAL = 0.0025  # "within 0.25% of the minimum" generalisation error

# DeepSeek LLM multi-step schedule: warmup, then x0.316 after 80% of tokens, x0.1 after 90%.
DS_WARMUP_STEPS = 2000
DS_STAGES = ((0.8, 0.316), (0.9, 0.1))


def eta_opt(C: float) -> float:
    """Peak learning rate (DeepSeek LLM Eq. 1)."""
    return ETA_COEF * C**ETA_EXP


def batch_opt_tokens(C: float) -> float:
    """Batch size in tokens (DeepSeek LLM Eq. 1)."""
    return BATCH_COEF * C**BATCH_EXP


@dataclass(frozen=True)
class ChinchillaForm:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N, D):
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def frontier(self) -> tuple[float, float, float]:
        """(G, a, b) with N_opt = G (C/6)^a and D_opt = (C/6)^b / G under C = 6ND."""
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / s)
        return G, self.beta / s, self.alpha / s


HOFFMANN = ChinchillaForm(E=1.69337, A=406.40, B=410.72, alpha=0.33917084, beta=0.2849083)
EPOCH = ChinchillaForm(E=1.8169, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


@dataclass(frozen=True)
class AllocationLaw:
    name: str
    k_size: float
    a: float
    k_D: float
    b: float
    size_measure: str  # "M" (DeepSeek accounting) or "6N2" (C = 6ND, N = all parameters)
    fit_range: tuple[float, float] | None  # compute budgets the law was fitted on
    source: str

    def split(self, C: float) -> tuple[float, float]:
        """(size_opt in FLOPs/token, D_opt in tokens) at budget C."""
        return self.k_size * C**self.a, self.k_D * C**self.b

    def budget_for_size(self, size: float) -> float:
        return (size / self.k_size) ** (1 / self.a)

    def budget_for_tokens(self, D: float) -> float:
        return (D / self.k_D) ** (1 / self.b)


def _from_chinchilla(name: str, form: ChinchillaForm, source: str) -> AllocationLaw:
    # 6 N_opt = 6 G 6^-a C^a ;  D_opt = G^-1 6^-b C^b
    G, a, b = form.frontier()
    return AllocationLaw(name, 6 * G * 6**-a, a, 6**-b / G, b, "6N2", None, source)


LAWS = {
    "deepseek": AllocationLaw(
        "deepseek",
        0.1715,
        0.5243,
        5.8316,
        0.4757,
        "M",
        (1e17, 3e20),
        "DeepSeek LLM Eq. 4 (M_opt = 0.1715 C^0.5243, D_opt = 5.8316 C^0.4757)",
    ),
    "chinchilla": _from_chinchilla("chinchilla", HOFFMANN, "Hoffmann et al. 2022 approach 3, unrounded constants"),
    "epoch": _from_chinchilla("epoch", EPOCH, "Besiroglu et al. 2024 refit of Chinchilla approach 3"),
}


def get_law(name: str) -> AllocationLaw:
    if name not in LAWS:
        raise GenlabError(f"unknown scaling law {name!r}; choose one of: {', '.join(LAWS)}")
    return LAWS[name]


def multistep_breakpoints(steps: int) -> list[tuple[int, float]]:
    """[(first step, lr factor)] of each decay stage, as genlab's multistep schedule applies it
    (train/optim.lr_factor: the update at 0-based step s uses stage k once s / steps >= fraction_k)."""
    out = []
    for frac, factor in DS_STAGES:
        s = math.ceil(frac * steps)
        while s > 0 and (s - 1) / steps >= frac:  # guard against float rounding either way
            s -= 1
        while s / steps < frac:
            s += 1
        out.append((s, factor))
    return out


def warnings_for(C: float, law: AllocationLaw) -> list[str]:
    """Where a plan leaves the budgets its laws were fitted on."""
    out = []
    lo, hi = HPARAM_FIT_RANGE
    if not lo <= C <= hi:
        out.append(
            f"C = {C:.3g} is outside the budgets DeepSeek fitted the lr/batch law on ({lo:.0e} to {hi:.0e}); "
            "the learning rate and batch size are extrapolated"
        )
    if law.fit_range and not law.fit_range[0] <= C <= law.fit_range[1]:
        out.append(
            f"C = {C:.3g} is outside the budgets the {law.name} allocation was fitted on "
            f"({law.fit_range[0]:.0e} to {law.fit_range[1]:.0e})"
        )
    return out
