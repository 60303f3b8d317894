// The fp8 e4m3 MLA latent cache row (`--kv-cache-dtype fp8_e4m3`, FlashMLA's layout), shared by
// the split-KV decode kernels (mla_decode.cuh) and the simple paged attention (attention.cuh).
// Cache [pages, 64, 656] u8, one 656-byte row per token:
//   bytes [0, 512)    the 512 latent values c_kv as e4m3fn, group g = values 128g .. 128g + 127
//   bytes [512, 528)  4 f32 scales, one per group: s_g = max(amax_g, 1e-10) / 448
//                     (dequant: c_kv[i] = e4m3(byte i) * s_{i / 128})
//   bytes [528, 656)  the 64 rope values k_pe as bf16 (not quantized)
// The element conversions are the portability layer's (types.h: to_float(e4m3fn), bf16).
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {
namespace mla {

// Row layout: bytes per row, latent values (and the scales' offset), rope values and their
// offset, values per scale group, 16-byte chunks per row.
constexpr u32 F8_ROW = 656, F8_LATENT = 512, F8_ROPE_DIM = 64, F8_SCALES = 512, F8_ROPE = 528, F8_GROUP = 128,
              F8_CHUNKS = F8_ROW / 16;
constexpr float F8_QMAX = 448.0f, F8_AMAX_EPS = 1e-10f;

// Value d (0 .. 575) of a 656-byte fp8 row as f32: e4m3(byte d) · s_{d / 128} in f32 for the
// latent part, the bf16 rope value after it.
DSV3_DEV float key_at(const u8* row, u32 d) {
  if (d < F8_LATENT) {
    e4m3fn b;
    b.bits = row[d];
    return to_float(b) * reinterpret_cast<const float*>(row + F8_SCALES)[d / F8_GROUP];
  }
  return to_float(reinterpret_cast<const bf16*>(row + F8_ROPE)[d - F8_LATENT]);
}

}  // namespace mla
}  // namespace dsv3
