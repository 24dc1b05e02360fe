// How the CPU kernels split a flat, dense tensor across threads into runs whose
// per-example parameters are constant and whose per-channel bounds come either as two
// scalars or as two small tables, so that every inner loop is a plain, vectorisable loop.
#pragma once
#include <ATen/Parallel.h>
#include <algorithm>
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

}  // namespace fastadv::cpu
