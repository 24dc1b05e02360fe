// How the CPU kernels split a flat, dense tensor across threads into runs whose
// per-example parameters are constant and whose per-channel bounds come either as two
// scalars or as two small tables, so that every inner loop is a plain, vectorisable loop.
#pragma once
#include <ATen/Parallel.h>
#include <algorithm>
#include <array>
#include <memory>
#include <vector>
#include "../params.h"

// The inner loops are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load
// time (GNU ifunc), so a portable wheel still uses the machine's widest vectors.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define FASTADV_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTADV_VECTOR_CLONES
#endif

namespace fastadv::cpu {

// Bounds that do not vary inside a run.
struct ScalarBounds {
  float lower_value, upper_value;
  float lower(int64_t) const { return lower_value; }
  float upper(int64_t) const { return upper_value; }
};

// Bounds that vary along the run, read from tables aligned with it.
struct TableBounds {
  const float* lower_table;
  const float* upper_table;
  float lower(int64_t j) const { return lower_table[j]; }
  float upper(int64_t j) const { return upper_table[j]; }
};

// ~32 KiB of fp32 per thread chunk keeps at::parallel_for's overhead negligible.
constexpr int64_t kGrainSize = 8192;
// Per-channel bounds repeat with period channel_div * channels; below this period a table
// of the repeated pattern beats runs of channel_div elements (channels_last: runs of 1).
constexpr int64_t kTableLength = 4096;

// Calls body(start, length, example, bounds) over [0, numel) in parallel, where bounds is a
// ScalarBounds or a TableBounds indexed from 0 at `start`.
template <typename Body>
void parallel_walk(const Layout& layout, const PerIndex& lower, const PerIndex& upper,
                   Body&& body) {
  const bool per_channel = lower.varies() || upper.varies();
  // checks::period has made sure that the period divides example_size: no overflow, no 0.
  const int64_t period = layout.channel_div * layout.channels;
  const bool use_table = per_channel && period <= kTableLength;

  // The channel pattern repeated to at least kTableLength, starting at phase 0.
  std::vector<float> lower_table, upper_table;
  int64_t table_length = 0;
  if (use_table) {
    table_length = period * std::max<int64_t>(1, kTableLength / period);
    lower_table.resize(table_length);
    upper_table.resize(table_length);
    for (int64_t j = 0; j < table_length; ++j) {
      const int64_t c = (j / layout.channel_div) % layout.channels;
      lower_table[j] = lower.at(c);
      upper_table[j] = upper.at(c);
    }
  }

  at::parallel_for(0, layout.numel, kGrainSize, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t example = layout.example(i);
      int64_t stop = std::min(end, (example + 1) * layout.example_size);
      if (use_table) {
        // Examples start at a multiple of the period, so i % period is the table phase.
        const int64_t phase = i % period;
        stop = std::min(stop, i + table_length - phase);
        body(i, stop - i, example,
             TableBounds{lower_table.data() + phase, upper_table.data() + phase});
      } else if (per_channel) {
        stop = std::min(stop, (i / layout.channel_div + 1) * layout.channel_div);
        const int64_t c = layout.channel(i);
        body(i, stop - i, example, ScalarBounds{lower.at(c), upper.at(c)});
      } else {
        body(i, stop - i, example, ScalarBounds{lower.value, upper.value});
      }
      i = stop;
    }
  });
}

// The other kinds (params.h Kind: per-channel eps or alpha, per example and channel, per
// element): calls body(start, length, tables) over [0, numel) in parallel, where tables[k]
// points at the `length` values of params[k] for elements start, start + 1, ...: a kElement
// tensor's own memory, a repeated channel pattern, or a per-thread scratch table filled for
// the run. Runs stay within one example and kTableLength elements.
template <size_t N, typename Body>
void parallel_walk_tables(const Layout& layout, const std::array<Param, N>& params,
                          Body&& body) {
  // Per-channel parameters repeat with the channel period: below kTableLength, a table of
  // the pattern repeated (as in parallel_walk) serves every run by pointer, with no fill.
  const int64_t period = layout.channel_div * layout.channels;
  const bool use_pattern = period <= kTableLength;
  // Runs never exceed kTableLength nor the tensor: tables no longer than that (a tiny tensor
  // then costs no more than its own size to set up).
  const int64_t longest = std::min(kTableLength, layout.numel);
  const int64_t pattern_length = period * std::max<int64_t>(1, (longest + period - 1) / period);
  std::array<std::vector<float>, N> patterns;
  for (size_t k = 0; k < N; ++k) {
    if (!use_pattern || params[k].kind != kChannel) continue;
    patterns[k].resize(pattern_length);
    for (int64_t j = 0; j < pattern_length; ++j) {
      patterns[k][j] = params[k].values[(j / layout.channel_div) % layout.channels];
    }
  }
  at::parallel_for(0, layout.numel, kGrainSize, [&](int64_t begin, int64_t end) {
    const std::unique_ptr<float[]> scratch(new float[N * longest]);  // uninitialised
    std::array<const float*, N> tables{};
    int64_t i = begin;
    while (i < end) {
      const int64_t example = layout.example(i);
      int64_t stop = std::min({end, (example + 1) * layout.example_size, i + longest});
      // Examples start at a multiple of the period, so i % period is the pattern's phase.
      const int64_t phase = use_pattern ? i % period : 0;
      if (use_pattern) stop = std::min(stop, i + pattern_length - phase);
      const int64_t n = stop - i;
      for (size_t k = 0; k < N; ++k) {
        const Param& p = params[k];
        if (p.kind == kElement) {
          tables[k] = p.values + i;
          continue;
        }
        if (!patterns[k].empty()) {
          tables[k] = patterns[k].data() + phase;
          continue;
        }
        float* out = scratch.get() + k * longest;
        tables[k] = out;
        if (p.kind == kChannel || p.kind == kExampleChannel) {
          // Segment by segment of one channel (channel_div elements): a fill each, no
          // division or kind switch per element.
          const float* by_channel =
              p.values + (p.kind == kExampleChannel ? example * layout.channels : 0);
          int64_t channel = layout.channel(i), j = 0;
          int64_t length = layout.channel_div - i % layout.channel_div;
          while (j < n) {
            const int64_t segment_end = std::min(n, j + length);
            std::fill(out + j, out + segment_end, by_channel[channel]);
            j = segment_end;
            length = layout.channel_div;
            if (++channel == layout.channels) channel = 0;
          }
        } else {
          std::fill(out, out + n, p.at(example, 0, layout.channels, i));
        }
      }
      body(i, n, tables);
      i = stop;
    }
  });
}

// Channel segments at least this long (contiguous NCHW: H*W) are walked one by one with
// every parameter a scalar (parallel_walk_segments): no tables to fill or read.
constexpr int64_t kMinSegment = 256;

// Whether to walk by channel segments: some parameter varies per channel, none per element,
// and the segments are long.
template <size_t N>
bool fits_segments(const Layout& layout, const std::array<Param, N>& params) {
  bool per_channel = false;
  for (const Param& p : params) {
    if (p.kind == kElement) return false;
    per_channel = per_channel || p.kind == kChannel || p.kind == kExampleChannel;
  }
  return per_channel && layout.channel_div >= kMinSegment;
}

// Calls body(start, length, values) over [0, numel) in parallel, runs within one channel
// segment (channel_div elements, which never cross an example: checks::period), values[k]
// params[k]'s value there.
template <size_t N, typename Body>
void parallel_walk_segments(const Layout& layout, const std::array<Param, N>& params,
                            Body&& body) {
  at::parallel_for(0, layout.numel, kGrainSize, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t segment = i / layout.channel_div;
      const int64_t stop = std::min(end, (segment + 1) * layout.channel_div);
      std::array<float, N> values;
      for (size_t k = 0; k < N; ++k) {
        values[k] = params[k].at(layout.example(i), segment % layout.channels, layout.channels, i);
      }
      body(i, stop - i, values);
      i = stop;
    }
  });
}

// Whether the parameters fit parallel_walk: eps/alpha constant within an example, the
// bounds per channel at most.
template <size_t N>
bool fits_runs(const std::array<Param, N>& per_example, const Param& lower, const Param& upper) {
  for (const Param& p : per_example) {
    if (!p.per_example_only()) return false;
  }
  return lower.per_channel_only() && upper.per_channel_only();
}

}  // namespace fastadv::cpu
