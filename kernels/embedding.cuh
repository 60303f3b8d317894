// Embedding gather: out[t, :] = table[ids[t], :]. One block per token. An id outside the
// vocabulary yields a NaN row (loud, never silently zero).
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class TT, class TO>
DSV3_DEV void embedding(TO* DSV3_RESTRICT out, const TT* DSV3_RESTRICT table, const u32* DSV3_RESTRICT ids,
                        u32 tokens, u32 hidden, u32 vocab) {
  const u32 t = blockIdx.x;
  if (t >= tokens) return;
  const u32 id = ids[t];
  TO* o = out + (u64)t * hidden;
  if (id >= vocab) {
    for (u32 i = tid(); i < hidden; i += nthreads()) o[i] = from_float<TO>(f32_nan());
    return;
  }
  const TT* row = table + (u64)id * hidden;
  for (u32 i = tid(); i < hidden; i += nthreads()) o[i] = from_float<TO>(to_float(row[i]));
}

}  // namespace dsv3
