// Shared by the CPU and CUDA kernels: how an element finds its example and channel,
// the per-example / per-channel parameters, and the one-clamp projection of the op contract.
#pragma once
#include <cstdint>

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

}  // namespace fastadv
