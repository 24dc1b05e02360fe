// Counter-based Philox4x32-10, bit-identical to Triton's tl.randint(seed, offset) and to the
// PyTorch reference (fastadv/reference.py): the same seed gives the same random start on
// every backend, independent of threads, blocks or grid size.
#pragma once
#include <cstdint>
#include "params.h"

namespace fastadv {

FASTADV_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// First output word of Philox4x32-10 with key (seed_lo, seed_hi), counter (lo, hi, 0, 0).
FASTADV_HD uint32_t philox_first_word(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = mulhi32(0xCD9E8D57u, a2) ^ c1 ^ k0;
    c2 = mulhi32(0xD2511F53u, a0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * a2;
    c3 = 0xD2511F53u * a0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// The top 24 bits as a float in [-1, 1): every operation here is exact in fp32.
FASTADV_HD float uniform_minus_one_one(uint32_t r) {
  return static_cast<float>(r >> 8) * 5.9604644775390625e-08f * 2.f - 1.f;
}

}  // namespace fastadv
