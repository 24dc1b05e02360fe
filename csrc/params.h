// Shared by the CPU and CUDA kernels: how an element finds its example and channel,
// the per-example / per-channel parameters, and the one-clamp projection of the op contract.
#pragma once
#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define FASTADV_HD __host__ __device__ __forceinline__
#else
#define FASTADV_HD inline
#endif

namespace fastadv {

// One float for the whole batch, or one per index (per example for eps/alpha, per
// channel for lower/upper), always fp32 and contiguous.
struct PerIndex {
  const float* values;  // nullptr: every index uses `value`
  float value;
  FASTADV_HD float at(int64_t k) const { return values ? values[k] : value; }
  FASTADV_HD bool varies() const { return values != nullptr; }
};

// A dense tensor walked in memory order, batch outermost: element i belongs to example
// i / example_size and to channel (i / channel_div) % channels. The op layer derives
// these from the strides (contiguous: channel_div = H*W; channels_last: channel_div = 1).
struct Layout {
  int64_t numel;
  int64_t example_size;
  int64_t channel_div;
  int64_t channels;
  FASTADV_HD int64_t example(int64_t i) const { return i / example_size; }
  FASTADV_HD int64_t channel(int64_t i) const { return (i / channel_div) % channels; }
};

struct BallParams {
  PerIndex eps, alpha;    // per example
  PerIndex lower, upper;  // per channel
};

// How a parameter of the l-inf step and the random start is indexed at flat element i of
// the walk (the kernel ops' `kinds`; fastadv/ops.py derives them from the broadcast shape).
enum Kind : int {
  kScalar = 0,          // one value for every element
  kExample = 1,         // t[example]
  kChannel = 2,         // t[channel]
  kExampleChannel = 3,  // t[example * channels + channel]
  kElement = 4,         // t[i]: a tensor laid out like x
};
constexpr int kKinds = 5;

struct Param {
  const float* values;  // nullptr for kScalar
  float value;
  int kind;
  FASTADV_HD float at(int64_t example, int64_t channel, int64_t channels, int64_t i) const {
    switch (kind) {
      case kExample: return values[example];
      case kChannel: return values[channel];
      case kExampleChannel: return values[example * channels + channel];
      case kElement: return values[i];
      default: return value;
    }
  }
  FASTADV_HD bool varies() const { return kind != kScalar; }
  FASTADV_HD bool per_example_only() const { return kind == kScalar || kind == kExample; }
  FASTADV_HD bool per_channel_only() const { return kind == kScalar || kind == kChannel; }
};

// The rounding orders of the l-inf update (the kernel ops' `order`): which tensor is
// written (an image x or a perturbation delta) and in which order the ball and the valid
// range are applied, each as one of the codebases people already run writes it.
enum Order : int {
  kClamp = 0,          // x:     clamp(x + a*s, max(x_nat - e, lo), min(x_nat + e, hi))
  kImageViaDelta = 1,  // x:     clamp(x_nat + clamp(x + a*s - x_nat, -e, e), lo, hi)
  kDelta = 2,          // delta: clamp(clamp(delta + a*s, -e, e), lo - x_nat, hi - x_nat)
  kDeltaViaImage = 3,  // delta: clamp(x_nat + clamp(delta + a*s, -e, e), lo, hi) - x_nat
};
constexpr int kOrders = 4;

// sign(g) with sign(0) = sign(NaN) = 0, as (g > 0) - (g < 0) in the reference. Both
// comparisons unconditional: the nested form keeps a branch, and GCC's AVX2 loops then stay
// scalar (AVX-512 if-converts it with masks).
FASTADV_HD float sign_or_zero(float g) {
  const float positive = g > 0.f ? 1.f : 0.f;
  const float negative = g < 0.f ? 1.f : 0.f;
  return positive - negative;
}

// max and min that return NaN when either argument is NaN, like torch.maximum/minimum and
// torch.clamp in the reference. Not fmaxf/fminf (they drop a NaN for the other argument),
// nor a bare `b > a ? b : a` (x86 maxps, CUDA FMNMX: a NaN b gives a). Both comparisons are
// made unconditionally: nested as `b != b ? b : (b > a ? b : a)` GCC keeps a branch (it may
// not speculate the signalling `>` under -ftrapping-math) and the CPU loops stop vectorising.
FASTADV_HD float max_nan(float a, float b) {
  const float larger = b > a ? b : a;  // a when either is NaN
  return b != b ? b : larger;
}
FASTADV_HD float min_nan(float a, float b) {
  const float smaller = b < a ? b : a;  // a when either is NaN
  return b != b ? b : smaller;
}

// max(lower, x_nat - eps) and min(upper, x_nat + eps): the ball and the valid range in one pair.
FASTADV_HD float combined_lower(float x_nat, float eps, float lower) {
  return max_nan(x_nat - eps, lower);
}
FASTADV_HD float combined_upper(float x_nat, float eps, float upper) {
  return min_nan(x_nat + eps, upper);
}

// min(max(v, lo), hi) as torch.clamp: NaN when v, lo or hi is NaN (lo > hi gives hi).
FASTADV_HD float clamp_nan(float v, float lo, float hi) { return min_nan(max_nan(v, lo), hi); }

// a*b rounded once, never contracted into an FMA with a later add (nvcc contracts by
// default; the CPU build passes -ffp-contract=off).
FASTADV_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// One element of the l-inf step in order kOrder (see Order); v0 is the value written
// (x or delta). a*s is exact (+-a or +-0), so v0 + a*s is one rounding in every order.
template <int kOrder>
FASTADV_HD float linf_update(float v0, float g, float xn, float e, float a, float lo, float hi) {
  const float v = v0 + a * sign_or_zero(g);
  if constexpr (kOrder == kClamp) {
    return clamp_nan(v, combined_lower(xn, e, lo), combined_upper(xn, e, hi));
  } else if constexpr (kOrder == kImageViaDelta) {
    return clamp_nan(xn + clamp_nan(v - xn, -e, e), lo, hi);
  } else if constexpr (kOrder == kDelta) {
    return clamp_nan(clamp_nan(v, -e, e), lo - xn, hi - xn);
  } else {
    return clamp_nan(xn + clamp_nan(v, -e, e), lo, hi) - xn;
  }
}

// One element of the random start in order kOrder from u in [-1, 1): noise e*u, then the
// order's projection (kImageViaDelta starts as kClamp: |e*u| <= e already).
template <int kOrder>
FASTADV_HD float random_update(float xn, float e, float u, float lo, float hi) {
  const float noise = mul_rn(e, u);
  if constexpr (kOrder == kDelta) {
    return clamp_nan(noise, lo - xn, hi - xn);
  } else if constexpr (kOrder == kDeltaViaImage) {
    return clamp_nan(xn + noise, lo, hi) - xn;
  } else {
    return clamp_nan(xn + noise, combined_lower(xn, e, lo), combined_upper(xn, e, hi));
  }
}

// Calls f(std::integral_constant<int, order>) for a runtime order in [0, kOrders).
template <typename F>
inline void dispatch_order(int64_t order, F&& f) {
  switch (order) {
    case kImageViaDelta: return f(std::integral_constant<int, kImageViaDelta>{});
    case kDelta: return f(std::integral_constant<int, kDelta>{});
    case kDeltaViaImage: return f(std::integral_constant<int, kDeltaViaImage>{});
    default: return f(std::integral_constant<int, kClamp>{});
  }
}

}  // namespace fastadv
