"""genlab's CPU kernels in C++, built once per machine by torch's `cpp_extension` (one extension for all).

Today one: NADE's teacher-forced pass, forward and backward (`ops/nade_cpu.py` has the autograd Function
and the algorithm): per example the running pre-activation and hidden vector stay in cache. (RMSNorm and
SwiGLU kernels were tried here too: 10-20x faster than the PyTorch forms in isolation, but 0-4% of an
LM step, measured; not worth a compiler in the LM path. docs/benchmarks.md has the figures.)

Kernels are float32 / float64 and CPU only; callers check `load()` and otherwise run their PyTorch
form, so a machine without a compiler only loses speed. The build needs a C++ compiler (g++ / c++, or
$CXX) and ninja and takes about a minute, once: torch caches it under $TORCH_EXTENSIONS_DIR (default
~/.cache/torch_extensions) with a name that hashes the source, torch's version and the CPU's flags
(it is compiled with -march=native). `-ffast-math` lets GCC vectorise `exp` through glibc's libmvec (a
scalar exp per element costs more than everything else here; with `-fno-finite-math-only` GCC keeps
exp scalar, measured 4-6x slower). What fast-math changes, and how the kernel copes: divisions become
approximate reciprocals that turn an infinite operand into NaN, so the sigmoid never forms exp(-a) of a
large negative a (it uses exp(-|a|): saturated units give exactly 0 and 1; tested at +-100 in float32);
the kernel never tests for NaN or infinity, so a NaN in the weights still comes out of the logits (the
hardware propagates it; tested), and a blown-up step still reaches the loss-spike guard as non-finite.
GENLAB_CPU_KERNELS=off turns all of them off (the PyTorch forms run).
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
  // exp of -|a| only: exp(-a) overflows to inf for a < -88.7 (float32), and under -ffast-math the
  // vectorised 1 / (1 + inf) is an approximate reciprocal that turns inf into NaN
#pragma omp simd
  for (int64_t i = 0; i < H; ++i) {
    const T e = std::exp(-std::abs(a[i]));
    const T r = T(1) / (T(1) + e);
    h[i] = a[i] >= T(0) ? r : e * r;
  }
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
    TORCH_CHECK(t >= 0 && t < nt, "thread id out of range");
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

void check(const at::Tensor& x, const at::Tensor& Wt, const at::Tensor& c, const at::Tensor& V,
           const at::Tensor& per_step) {
  TORCH_CHECK(x.device().is_cpu() && Wt.device().is_cpu() && c.device().is_cpu() && V.device().is_cpu() &&
              per_step.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kByte && x.is_contiguous(), "x: contiguous (B, D) uint8");
  TORCH_CHECK(Wt.dim() == 2 && Wt.is_contiguous() && V.is_contiguous(), "Wt, V: contiguous (D, H)");
  TORCH_CHECK(Wt.size(0) == x.size(1) && V.sizes() == Wt.sizes(), "shapes: x (B, D), Wt and V (D, H)");
  TORCH_CHECK(c.numel() == Wt.size(1), "c: (H,)");
  TORCH_CHECK(c.scalar_type() == Wt.scalar_type() && V.scalar_type() == Wt.scalar_type() &&
              per_step.scalar_type() == Wt.scalar_type(), "one floating dtype");
}

}  // namespace

at::Tensor nade_forward(at::Tensor x, at::Tensor Wt, at::Tensor c, at::Tensor V, at::Tensor bias) {
  check(x, Wt, c, V, bias);
  TORCH_CHECK(bias.numel() == x.size(1), "bias: (D,)");
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
  check(x, Wt, c, V, g);
  TORCH_CHECK(g.sizes() == x.sizes(), "g: (B, D)");
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

FUNCTIONS = ["nade_forward", "nade_backward"]

_lock = threading.Lock()
_state: dict = {}  # "module": the built extension, or "error": why it is not available


def _tag() -> str:
    """A short hash of the source, torch's version and the CPU's feature flags (a -march=native build is
    only reused on the same kind of CPU)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha1((flags + _SOURCE + torch.__version__).encode()).hexdigest()[:10]


def why_not() -> str | None:
    """The reason the kernels cannot be built here, checked without building, or None."""
    if os.environ.get("GENLAB_CPU_KERNELS", "").lower() in ("0", "off", "no", "false"):
        return "GENLAB_CPU_KERNELS=off"
    if not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
        return "no C++ compiler (g++ / c++ on PATH, or $CXX)"
    if not shutil.which("ninja"):
        try:
            import ninja  # noqa: F401
        except ImportError:
            return "torch's cpp_extension needs ninja (Debian: ninja-build)"
    return None


def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)  # never stdout: `genlab eval --json` and the like print data there


def load(log=_to_stderr):
    """The built extension (building it the first time on this machine), or None, with the reason in
    `error()` and one warning line on stderr. Thread-safe; a failed build is not retried in this process."""
    with _lock:
        if "module" in _state or "error" in _state:
            return _state.get("module")
        reason = why_not()
        if reason is None:
            try:
                from torch.utils.cpp_extension import _get_build_directory, load_inline

                name = f"genlab_cpu_{_tag()}"
                built = os.path.exists(os.path.join(_get_build_directory(name, verbose=False), f"{name}.so"))
                if log is not None and not built:
                    log("building genlab's CPU kernels (once per machine, about a minute)")
                _state["module"] = load_inline(
                    name=name,
                    cpp_sources=[_SOURCE],
                    functions=FUNCTIONS,
                    extra_cflags=["-O3", "-march=native", "-fopenmp-simd", "-ffast-math"],
                    extra_ldflags=["-lmvec"],
                    verbose=False,
                )
                return _state["module"]
            except Exception as e:  # a compiler error, missing headers, ...
                last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                reason = f"the build failed: {last}"
        _state["error"] = reason
        print(f"warning: genlab's CPU kernels are unavailable ({reason}); running the PyTorch forms", file=sys.stderr)
        return None


def ready() -> bool:
    """True when the kernels are built and loaded (without building them)."""
    return "module" in _state


def error() -> str | None:
    return _state.get("error")
