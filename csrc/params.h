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

// sign(g) with sign(0) = sign(NaN) = 0.
FASTADV_HD float sign_or_zero(float g) { return g > 0.f ? 1.f : (g < 0.f ? -1.f : 0.f); }

// max(lower, x_nat - eps) and min(upper, x_nat + eps): the ball and the valid range in one pair.
FASTADV_HD float combined_lower(float x_nat, float eps, float lower) {
  float t = x_nat - eps;
  return t > lower ? t : lower;
}
FASTADV_HD float combined_upper(float x_nat, float eps, float upper) {
  float t = x_nat + eps;
  return t < upper ? t : upper;
}

// min(max(v, lo), hi) that keeps a NaN v as NaN, like torch.clamp.
FASTADV_HD float clamp_keep_nan(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

}  // namespace fastadv
