// Embedding gather: out[t, :] = table[ids[t] - first, :] for the rows [first, first + rows) this
// table holds (a vocab-parallel rank's slice; the whole vocabulary: first 0, rows = total), zeros
// for ids of other ranks' slices (their sum over the ranks is the lookup). One block per token.
// An id outside the vocabulary (>= total) yields a NaN row (loud, never silently zero).
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class TT, class TO>
DSV3_DEV void embedding(TO* DSV3_RESTRICT out, const TT* DSV3_RESTRICT table, const u32* DSV3_RESTRICT ids,
                        u32 tokens, u32 hidden, u32 rows, u32 first, u32 total) {
  const u32 t = blockIdx.x;
  if (t >= tokens) return;
  const u32 id = ids[t];
  TO* o = out + (u64)t * hidden;
  if (id >= total) {
    for (u32 i = tid(); i < hidden; i += nthreads()) o[i] = from_float<TO>(f32_nan());
    return;
  }
  if (id < first || id - first >= rows) {
    for (u32 i = tid(); i < hidden; i += nthreads()) o[i] = from_float<TO>(0.0f);
    return;
  }
  const TT* row = table + (u64)(id - first) * hidden;
  for (u32 i = tid(); i < hidden; i += nthreads()) o[i] = from_float<TO>(to_float(row[i]));
}

}  // namespace dsv3
