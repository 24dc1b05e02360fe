// Device helpers shared by fastadv's CUDA kernels: 16-byte packs, the split of a flat range
// into an aligned vector body plus a scalar remainder, cursors over the per-example and
// per-channel parameters (and over any Kind), the dtype dispatch and the launch sizes.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include "../params.h"

// float, half and bfloat16: the only dtypes the op layer passes (no double instantiations).
#define FASTADV_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...)                 \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                         \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

namespace fastadv {
namespace cuda {

constexpr int kPackBytes = 16;  // widest global load/store of one thread on sm_90

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements of T per load when moving N of them: at most one 16-byte pack at a time.
template <typename T, int N>
constexpr int chunk_elems() {
  return N * sizeof(T) > kPackBytes ? static_cast<int>(kPackBytes / sizeof(T)) : N;
}

// N consecutive elements as fp32; p must be aligned to the chunk (any p when N == 1).
template <int N, typename T>
__device__ __forceinline__ void load_float(const T* p, float (&out)[N]) {
  constexpr int C = chunk_elems<T, N>();
#pragma unroll
  for (int c = 0; c < N; c += C) {
    const Pack<T, C> pk = *reinterpret_cast<const Pack<T, C>*>(p + c);
#pragma unroll
    for (int j = 0; j < C; ++j) out[c + j] = static_cast<float>(pk.v[j]);
  }
}

// fp32 -> T rounds to nearest even (c10's Half / BFloat16 conversions).
template <int N, typename T>
__device__ __forceinline__ void store_float(T* p, const float (&in)[N]) {
  constexpr int C = chunk_elems<T, N>();
#pragma unroll
  for (int c = 0; c < N; c += C) {
    Pack<T, C> pk;
#pragma unroll
    for (int j = 0; j < C; ++j) pk.v[j] = static_cast<T>(in[c + j]);
    *reinterpret_cast<Pack<T, C>*>(p + c) = pk;
  }
}

// A range [0, n) as packs [head, head + nvec*VEC) and single elements everywhere else.
struct VecSplit {
  int64_t head;
  int64_t nvec;
};

template <int VEC, typename T>
FASTADV_HD bool pack_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (chunk_elems<T, VEC>() * sizeof(T)) == 0;
}

// The tensors share strides, so they share the element offset but not the byte alignment:
// peel elements until `first` is 16-byte aligned, then use packs only if every other
// pointer is aligned at that same element; otherwise the whole range goes scalar.
template <int VEC, typename T, typename... Ts>
FASTADV_HD VecSplit vec_split(int64_t n, const T* first, const Ts*... rest) {
  static_assert(VEC * sizeof(T) == kPackBytes, "a pack of `first` is one 16-byte access");
  const uintptr_t mis = reinterpret_cast<uintptr_t>(first) % kPackBytes;
  const int64_t head = mis == 0 ? 0 : static_cast<int64_t>((kPackBytes - mis) / sizeof(T));
  if (mis % sizeof(T) != 0 || head >= n || !(pack_aligned<VEC>(rest + head) && ... && true)) {
    return {n, 0};
  }
  return {head, (n - head) / VEC};
}

// Thread `tid` of `nthreads` calls f(std::integral_constant<int, VEC>, i) on its packs and
// then f(std::integral_constant<int, 1>, i) on its single elements (head and tail, or all of
// an unaligned range). A thread's indices are the same on every call with the same split.
template <int VEC, typename F>
__device__ __forceinline__ void for_each_pack(int64_t n, VecSplit s, int64_t tid,
                                              int64_t nthreads, F&& f) {
  for (int64_t k = tid; k < s.nvec; k += nthreads) {
    f(std::integral_constant<int, VEC>{}, s.head + k * VEC);
  }
  const int64_t body = s.nvec * VEC;
  for (int64_t k = tid; k < n - body; k += nthreads) {
    f(std::integral_constant<int, 1>{}, k < s.head ? k : k + body);
  }
}

// The values of K PerIndex parameters at elements i, i+1, ... where the parameter index is
// (i / period) % wrap: one division when made, none per step, none at all when no parameter
// varies (then period is "never" and the values are the scalars).
template <int K>
struct IndexCursor {
  PerIndex params[K];
  float value[K];
  int64_t index, offset, period, wrap;

  __device__ __forceinline__ void load() {
#pragma unroll
    for (int k = 0; k < K; ++k) value[k] = params[k].at(index);
  }
  __device__ __forceinline__ void next() {
    if (++offset == period) {
      offset = 0;
      if (++index == wrap) index = 0;
      load();
    }
  }
};

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

template <typename... P>
__device__ __forceinline__ bool any_varies(const P&... params) {
  return (params.varies() || ...);
}

// With kMayVary = false the values pointer is known null: at() folds to the scalar.
template <bool kMayVary>
__device__ __forceinline__ PerIndex scalar_unless(const PerIndex& p) {
  return kMayVary ? p : PerIndex{nullptr, p.value};
}

// Per-example parameters (eps, alpha) from element i on. kMayVary = false: the caller knows
// that every parameter is a scalar, so the index code compiles away (fewer registers).
template <bool kMayVary, typename... P>
__device__ __forceinline__ IndexCursor<sizeof...(P)> per_example(const Layout& L, int64_t i,
                                                                  const P&... params) {
  IndexCursor<sizeof...(P)> c{{scalar_unless<kMayVary>(params)...}, {}, 0, 0, kNever, kNever};
  if (kMayVary && any_varies(params...)) {
    c.index = L.example(i);
    c.offset = i - c.index * L.example_size;
    c.period = L.example_size;
    // Wrap after the last example: the step past a thread's last element then reloads
    // example 0 instead of reading one past the end of eps/alpha.
    c.wrap = (L.numel + L.example_size - 1) / L.example_size;
  }
  c.load();
  return c;
}

// Per-channel parameters (lower, upper) from element i on; same index as Layout::channel.
template <bool kMayVary, typename... P>
__device__ __forceinline__ IndexCursor<sizeof...(P)> per_channel(const Layout& L, int64_t i,
                                                                  const P&... params) {
  IndexCursor<sizeof...(P)> c{{scalar_unless<kMayVary>(params)...}, {}, 0, 0, kNever, kNever};
  if (kMayVary && any_varies(params...)) {
    const int64_t q = i / L.channel_div;
    c.index = q % L.channels;
    c.offset = i - q * L.channel_div;
    c.period = L.channel_div;
    c.wrap = L.channels;
  }
  c.load();
  return c;
}

// The loop a kernel of the l-inf step or the random start runs, picked on the host from the
// parameters' kinds (params.h Kind) by walk_path and compiled as a template parameter.
enum WalkPath : int {
  kAllScalar = 0,  // every parameter a scalar: no index math at all
  kRuns = 1,       // eps/alpha per example, the bounds per channel (at most): IndexCursor
  kGeneral = 2,    // any kinds: WalkIndices and Param::at
};

// `per_example`: the parameters of the ball (eps, alpha); `per_channel`: the bounds.
inline int walk_path(std::initializer_list<Param> per_example,
                     std::initializer_list<Param> per_channel) {
  bool scalar = true, runs = true;
  for (const Param& p : per_example) {
    scalar = scalar && !p.varies();
    runs = runs && p.per_example_only();
  }
  for (const Param& p : per_channel) {
    scalar = scalar && !p.varies();
    runs = runs && p.per_channel_only();
  }
  return scalar ? kAllScalar : runs ? kRuns : kGeneral;
}

// Calls f(std::integral_constant<int, order>, std::integral_constant<int, path>). Order 0
// (kClamp, the op as it always was) keeps all three loops; the other orders have the
// all-scalar loop and the general one, which also serves their kRuns cases: 2 loops instead
// of 3 for three of the four orders (fewer kernels to compile and ship).
template <typename F>
inline void dispatch_order_path(int64_t order, int path, F&& f) {
  dispatch_order(order, [&](auto order_constant) {
    constexpr int kOrder = decltype(order_constant)::value;
    if (path == kAllScalar) return f(order_constant, std::integral_constant<int, kAllScalar>{});
    if constexpr (kOrder == kClamp) {
      if (path == kRuns) return f(order_constant, std::integral_constant<int, kRuns>{});
    }
    return f(order_constant, std::integral_constant<int, kGeneral>{});
  });
}

// A Param as the IndexCursor's PerIndex (kRuns: a table indexed by example or by channel).
FASTADV_HD PerIndex per_index_of(const Param& p) { return {p.values, p.value}; }

FASTADV_HD bool needs_example(const Param& p) {
  return p.kind == kExample || p.kind == kExampleChannel;
}
FASTADV_HD bool needs_channel(const Param& p) {
  return p.kind == kChannel || p.kind == kExampleChannel;
}

// The example and the channel of the N elements from i on, for Param::at (any kind): one
// division for each index that some parameter needs (none for the others), none per element
// (as IndexCursor), and computed once for all the parameters of the pack.
template <int N>
struct WalkIndices {
  int64_t i, channels;
  int64_t example[N], channel[N];
};

template <int N, typename... P>
__device__ __forceinline__ WalkIndices<N> walk_indices(const Layout& L, int64_t i,
                                                       const P&... params) {
  WalkIndices<N> w;
  w.i = i;
  w.channels = L.channels;
  if ((needs_example(params) || ...)) {
    int64_t example = L.example(i), offset = i - example * L.example_size;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      w.example[j] = example;
      if (++offset == L.example_size) {
        offset = 0;
        ++example;
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) w.example[j] = 0;
  }
  if ((needs_channel(params) || ...)) {
    const int64_t q = i / L.channel_div;
    int64_t channel = q % L.channels, offset = i - q * L.channel_div;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      w.channel[j] = channel;
      if (++offset == L.channel_div) {
        offset = 0;
        if (++channel == L.channels) channel = 0;
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) w.channel[j] = 0;
  }
  return w;
}

// p's values at the N elements of w. The kind is branched on once per parameter and pack, not
// per element: Param::at's switch for each element and parameter of the unrolled loop let
// the compiler specialise the loop for every combination of the kinds (a 48,000-instruction
// kernel). kElement reads its tensor at x's flat offset, in 16-byte packs when aligned.
template <int N>
__device__ __forceinline__ void walk_values(const Param& p, const WalkIndices<N>& w,
                                            float (&out)[N]) {
  if (p.kind == kScalar) {
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = p.value;
  } else if (p.kind == kElement) {
    const float* v = p.values + w.i;
    if (pack_aligned<N>(v)) {
      load_float<N>(v, out);
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) out[j] = v[j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = p.at(w.example[j], w.channel[j], w.channels, w.i + j);
  }
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Blocks of a launch with one block per example (l2_step, keep_best): the grid holds at most
// 2^31 - 1 blocks in x, so more examples (example_size 1 of a tensor that large) are refused
// rather than cut short by the cast.
inline unsigned example_blocks(const char* op, int64_t examples) {
  TORCH_CHECK_VALUE(examples <= std::numeric_limits<int32_t>::max(), op, ": ", examples,
                    " examples are more than the CUDA grid's 2147483647 blocks (one per "
                    "example); use a larger example_size");
  return static_cast<unsigned>(examples);
}

// Blocks for a grid-stride loop over `items`: enough to fill every SM, no more.
inline unsigned grid_size(int64_t items, int threads) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t resident =
      static_cast<int64_t>(prop->multiProcessorCount) * (prop->maxThreadsPerMultiProcessor / threads);
  return static_cast<unsigned>(std::clamp<int64_t>((items + threads - 1) / threads, 1, resident));
}

}  // namespace cuda
}  // namespace fastadv
