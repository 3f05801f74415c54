"""NADE's teacher-forced pass as one fused CPU kernel (C++, built on first use with torch's
`cpp_extension`), for binary x in step order.

Per example, in step order, the kernel keeps the running pre-activation a (H,) and the current hidden
vector h = sigmoid(a) in cache, and reads each step's row of V once:

    forward   logit[k] = bias[k] + V[k] . h;   after a one at step k: a += W[:, k], h = sigmoid(a)
    backward  the same sweep forward keeps the n1 + 1 hidden vectors of the example ((n1 + 1) x H, in
              L2), then a sweep backward over the steps accumulates
                  dV[k] += g[k] h_s,   dh_s += g[k] V[k]
              and, where segment s ends (at a one, or at step 0), da_s = dh_s h_s (1 - h_s),
              suffix += da_s, dW[:, k] += suffix (k the step of the one that opened s), dc += suffix
              at step 0.

The segment form (`families/density/nade_fast.py`) computes the same quantities with PyTorch ops,
each streaming a (B, n1 + 1, H) tensor through memory; here nothing of that size exists. Examples run
in parallel (ATen's parallel_for); dV, dW and dc are summed per thread, then over threads. float32
and float64. The hidden vectors are recomputed from W and c in backward (exact: the same additions in
the same order as forward), so forward saves nothing but its inputs.

The build needs a C++ compiler (g++ / c++, or $CXX) and ninja, and takes ~30-60 s once per machine
(torch caches it under $TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions; the name carries a
hash of this source and of the CPU's flags, because it is built with -march=native). `available()`
builds it and says whether that worked; callers fall back to the segment form otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

namespace {

template <typename T>
inline void sigmoid_into(const T* a, T* h, int64_t H) {
#pragma omp simd
  for (int64_t i = 0; i < H; ++i) h[i] = T(1) / (T(1) + std::exp(-a[i]));
}

template <typename T>
inline T dot(const T* x, const T* y, int64_t H) {
  T acc = 0;
#pragma omp simd reduction(+:acc)
  for (int64_t i = 0; i < H; ++i) acc += x[i] * y[i];
  return acc;
}

template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t H) {
#pragma omp simd
  for (int64_t i = 0; i < H; ++i) y[i] += alpha * x[i];
}

template <typename T>
void forward_impl(const uint8_t* x, const T* Wt, const T* c, const T* V, const T* bias, T* out,
                  int64_t B, int64_t D, int64_t H) {
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    std::vector<T> a(H), h(H);
    for (int64_t b = lo; b < hi; ++b) {
      const uint8_t* xb = x + b * D;
      T* ob = out + b * D;
      std::copy(c, c + H, a.begin());
      sigmoid_into(a.data(), h.data(), H);
      for (int64_t k = 0; k < D; ++k) {
        ob[k] = bias[k] + dot(V + k * H, h.data(), H);
        if (xb[k]) {
          axpy(T(1), Wt + k * H, a.data(), H);
          sigmoid_into(a.data(), h.data(), H);
        }
      }
    }
  });
}

template <typename T>
void backward_impl(const uint8_t* x, const T* Wt, const T* c, const T* V, const T* g, T* dWt, T* dc, T* dV,
                   int64_t B, int64_t D, int64_t H) {
  const int nt = at::get_num_threads();
  // per-thread sums of dV, dW (step-major, like Wt) and dc; summed over threads at the end
  std::vector<std::vector<T>> accV(nt), accW(nt), accC(nt);
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    const int t = at::get_thread_num();
    if (accV[t].empty()) {
      accV[t].assign(D * H, T(0));
      accW[t].assign(D * H, T(0));
      accC[t].assign(H, T(0));
    }
    T* tV = accV[t].data();
    T* tW = accW[t].data();
    T* tC = accC[t].data();
    std::vector<T> a(H), hs((D + 1) * H), dh(H), suffix(H);
    for (int64_t b = lo; b < hi; ++b) {
      const uint8_t* xb = x + b * D;
      const T* gb = g + b * D;
      // forward sweep: the hidden vector of every segment, in the order forward made them
      std::copy(c, c + H, a.begin());
      sigmoid_into(a.data(), hs.data(), H);
      int64_t s = 0;
      for (int64_t k = 0; k < D; ++k) {
        if (xb[k]) {
          axpy(T(1), Wt + k * H, a.data(), H);
          ++s;
          sigmoid_into(a.data(), hs.data() + s * H, H);
        }
      }
      // backward sweep over the steps
      std::fill(dh.begin(), dh.end(), T(0));
      std::fill(suffix.begin(), suffix.end(), T(0));
      for (int64_t k = D - 1; k >= 0; --k) {
        if (xb[k]) {  // segment s (the steps after this one) ends here: close it
          const T* h = hs.data() + s * H;
          for (int64_t i = 0; i < H; ++i) suffix[i] += dh[i] * h[i] * (T(1) - h[i]);
          axpy(T(1), suffix.data(), tW + k * H, H);
          std::fill(dh.begin(), dh.end(), T(0));
          --s;
        }
        const T* h = hs.data() + s * H;
        const T gk = gb[k];
        T* vk = tV + k * H;
        const T* Vk = V + k * H;
        T* d = dh.data();
#pragma omp simd
        for (int64_t i = 0; i < H; ++i) {  // dV[k] += g[k] h_s and dh_s += g[k] V[k] in one pass
          vk[i] += gk * h[i];
          d[i] += gk * Vk[i];
        }
      }
      const T* h0 = hs.data();
      for (int64_t i = 0; i < H; ++i) tC[i] += suffix[i] + dh[i] * h0[i] * (T(1) - h0[i]);
    }
  });
  for (int t = 0; t < nt; ++t) {
    if (accV[t].empty()) continue;
    for (int64_t i = 0; i < D * H; ++i) { dV[i] += accV[t][i]; dWt[i] += accW[t][i]; }
    for (int64_t i = 0; i < H; ++i) dc[i] += accC[t][i];
  }
}

void check(const at::Tensor& x, const at::Tensor& Wt, const at::Tensor& V) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kByte && x.is_contiguous(), "x: contiguous (B, D) uint8");
  TORCH_CHECK(Wt.dim() == 2 && Wt.is_contiguous() && V.is_contiguous(), "Wt, V: contiguous (D, H)");
  TORCH_CHECK(Wt.size(0) == x.size(1) && V.sizes() == Wt.sizes(), "shapes: x (B, D), Wt and V (D, H)");
}

}  // namespace

at::Tensor nade_forward(at::Tensor x, at::Tensor Wt, at::Tensor c, at::Tensor V, at::Tensor bias) {
  check(x, Wt, V);
  const int64_t B = x.size(0), D = x.size(1), H = Wt.size(1);
  at::Tensor out = at::empty({B, D}, Wt.options());
  AT_DISPATCH_FLOATING_TYPES(Wt.scalar_type(), "nade_forward", [&] {
    forward_impl<scalar_t>(x.data_ptr<uint8_t>(), Wt.data_ptr<scalar_t>(), c.contiguous().data_ptr<scalar_t>(),
                           V.data_ptr<scalar_t>(), bias.contiguous().data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                           B, D, H);
  });
  return out;
}

std::vector<at::Tensor> nade_backward(at::Tensor x, at::Tensor Wt, at::Tensor c, at::Tensor V, at::Tensor g) {
  check(x, Wt, V);
  const int64_t B = x.size(0), D = x.size(1), H = Wt.size(1);
  at::Tensor dWt = at::zeros_like(Wt), dV = at::zeros_like(V), dc = at::zeros({H}, Wt.options());
  at::Tensor gc = g.contiguous();
  AT_DISPATCH_FLOATING_TYPES(Wt.scalar_type(), "nade_backward", [&] {
    backward_impl<scalar_t>(x.data_ptr<uint8_t>(), Wt.data_ptr<scalar_t>(), c.contiguous().data_ptr<scalar_t>(),
                            V.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), dWt.data_ptr<scalar_t>(),
                            dc.data_ptr<scalar_t>(), dV.data_ptr<scalar_t>(), B, D, H);
  });
  return {dWt, dc, dV};
}
"""

_lock = threading.Lock()
_state: dict = {}  # "module": the built extension, or "error": why it is not available


def _cpu_tag() -> str:
    """A short hash of the CPU's feature flags: a -march=native build is only reused on the same kind."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha1((flags + _SOURCE + torch.__version__).encode()).hexdigest()[:10]


def why_not() -> str | None:
    """The reason the kernel cannot be built here, checked without building, or None."""
    if os.environ.get("GENLAB_NADE_KERNEL", "").lower() in ("0", "off", "segment"):
        return "GENLAB_NADE_KERNEL turns it off"
    if not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
        return "no C++ compiler (g++ / c++ on PATH, or $CXX)"
    if not shutil.which("ninja"):
        try:
            import ninja  # noqa: F401
        except ImportError:
            return "torch's cpp_extension needs ninja (Debian: ninja-build)"
    return None


def load(log=None):
    """The built extension module (building it the first time), or None with the reason kept in
    `error()`. Thread-safe; a failed build is not retried in this process."""
    with _lock:
        if "module" in _state or "error" in _state:
            return _state.get("module")
        reason = why_not()
        if reason is None:
            try:
                from torch.utils.cpp_extension import _get_build_directory, load_inline

                name = f"genlab_nade_{_cpu_tag()}"
                built = os.path.exists(os.path.join(_get_build_directory(name, verbose=False), f"{name}.so"))
                if log is not None and not built:
                    log("building genlab's fused NADE CPU kernel (once per machine, about a minute)")
                _state["module"] = load_inline(
                    name=name,
                    cpp_sources=[_SOURCE],
                    functions=["nade_forward", "nade_backward"],
                    # -ffast-math lets GCC vectorise exp through glibc's libmvec (a scalar exp per
                    # hidden unit would cost more than the rest of the kernel)
                    extra_cflags=["-O3", "-march=native", "-fopenmp-simd", "-ffast-math"],
                    extra_ldflags=["-lmvec"],
                    verbose=False,
                )
                return _state["module"]
            except Exception as e:  # a compiler error, missing headers, ...
                reason = f"the build failed: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
        _state["error"] = reason
        print(f"warning: NADE: fused CPU kernel unavailable ({reason}); using the segment form", file=sys.stderr)
        return None


def error() -> str | None:
    return _state.get("error")


class FusedNADE(torch.autograd.Function):
    """logits (B, D) in step order for xo (B, D) of exact 0/1 in step order (see the module docstring)."""

    @staticmethod
    def forward(ctx, xo, W, c, V, bias):
        ext = _state["module"]
        x8 = xo.to(torch.uint8).contiguous()
        Wt = W.detach().T.contiguous()  # (D, H): the column of step k is one contiguous row
        Vc = V.detach().contiguous()
        out = ext.nade_forward(x8, Wt, c.detach(), Vc, bias.detach())
        ctx.save_for_backward(x8, Wt, c.detach(), Vc)
        return out

    @staticmethod
    def backward(ctx, g):
        x8, Wt, c, V = ctx.saved_tensors
        dWt, dc, dV = _state["module"].nade_backward(x8, Wt, c, V, g.contiguous())
        db = g.sum(0) if ctx.needs_input_grad[4] else None
        return None, dWt.T, dc, dV, db


def fused_logits(xo: torch.Tensor, W, c, V, bias) -> torch.Tensor:
    """(B, D) logits in step order; call only after `load()` returned the module."""
    return FusedNADE.apply(xo, W, c, V, bias)
