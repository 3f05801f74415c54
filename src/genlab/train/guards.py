"""Loss-spike guard: skip an update whose loss or gradient norm jumps far above recent steps.

A bad batch (corrupt data, an outlier document) can produce a loss or gradient many times larger
than anything recent; one AdamW update from it can undo hours of training. The guard keeps the
last `window` accepted values of the loss and of the (pre-clip) gradient norm in two streaming
window maxima (genlab.ops.window_max.SlidingMax, O(1) per step). Once `window` steps have been
accepted, a step is a spike if

    loss > factor * max(recent losses)   or   grad_norm > factor * max(recent grad norms)

(each test only while that max is positive). The trainer then drops the gradients instead of
stepping the optimizer; the batch counts as consumed and the step number still advances, so the
data order, the lr schedule and resume are unchanged. Spikes are not added to the windows. If
`patience` steps in a row are spikes, the scale has changed for good, and training stops with an
error instead of silently skipping everything.

Non-finite values (a NaN or inf loss, or a NaN/inf gradient, which makes the gradient norm
non-finite) are checked first, with or without the spike windows: the step is skipped the same way
and logged, and `nan_patience` non-finite steps in a row stop training with an error.
"""

from __future__ import annotations

import math

from genlab.errors import GenlabError
from genlab.ops.window_max import SlidingMax


class SpikeGuard:
    def __init__(self, window: int, factor: float, patience: int = 5, nan_patience: int = 3):
        self.window, self.factor, self.patience = int(window), float(factor), int(patience)
        self.nan_patience = int(nan_patience)  # non-finite steps in a row before stopping
        self.nonfinite = 0  # non-finite steps so far
        self.nonfinite_consecutive = 0
        self.loss = SlidingMax(window) if window else None
        self.grad_norm = SlidingMax(window) if window else None
        self.skipped = 0  # spikes so far
        self.consecutive = 0  # spikes in a row, up to now

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def check(self, loss: float, grad_norm: float) -> str | None:
        """None = a normal step (its values join the windows); else why it is skipped."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.nonfinite += 1
            self.nonfinite_consecutive += 1
            what = f"loss {loss}" if not math.isfinite(loss) else f"gradient (norm {grad_norm})"
            if self.nonfinite_consecutive >= self.nan_patience:
                raise GenlabError(
                    f"non-finite {what} in {self.nonfinite_consecutive} steps in a row; lower "
                    "train.lr, check the data, or raise train.nan_patience"
                )
            return f"non-finite {what}"
        self.nonfinite_consecutive = 0
        if not self.enabled:
            return None
        reason = None
        if self.loss.full:
            for name, value, win in (("loss", loss, self.loss), ("grad norm", grad_norm, self.grad_norm)):
                top = win.max
                if top > 0 and value > self.factor * top:
                    reason = (
                        f"{name} {value:.4g} > {self.factor:g} x the max of the last {self.window} steps ({top:.4g})"
                    )
                    break
        if reason is None:
            self.consecutive = 0
            self.loss.push(loss)
            self.grad_norm.push(grad_norm)
            return None
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.patience:
            raise GenlabError(
                f"{self.consecutive} steps in a row were loss spikes ({reason}); the data or lr "
                "changed the scale for good: lower train.lr, check the data, or raise "
                "train.spike_factor (train.spike_window=0 turns the guard off)"
            )
        return reason

    def state_dict(self) -> dict:
        st = {
            "skipped": self.skipped,
            "consecutive": self.consecutive,
            "nonfinite": self.nonfinite,
            "nonfinite_consecutive": self.nonfinite_consecutive,
        }
        if self.enabled:
            st.update(loss=self.loss.state_dict(), grad_norm=self.grad_norm.state_dict())
        return st

    def load_state_dict(self, st: dict) -> None:
        self.skipped, self.consecutive = int(st["skipped"]), int(st["consecutive"])
        self.nonfinite = int(st.get("nonfinite", 0))
        self.nonfinite_consecutive = int(st.get("nonfinite_consecutive", 0))
        if self.enabled and "loss" in st and int(st["loss"]["k"]) == self.window:
            self.loss.load_state_dict(st["loss"])
            self.grad_norm.load_state_dict(st["grad_norm"])
        # a changed window size (--set train.spike_window=... on resume) starts with empty windows
