#!/usr/bin/env python3
"""Baselines for benches/fp8_gemm.rs on the same GPU, same shapes, same columns:

  - cuBLASLt block-scaled FP8 (1x128 activation scales, 128x128 weight scales) through
    torch._scaled_mm (torch >= 2.9 with CUDA >= 12.9 picks the DeepSeek recipe from the scale shapes);
  - bf16 cuBLAS GEMM (x @ w.T) of the same shape.

Timing as the Rust runner: CUDA events around 20 back-to-back launches, per-launch mean, median of
7 batches after 5 warm-up launches; weights replicated and rotated when smaller than 256 MiB (no L2
replay); the device-to-device copy (read + write bytes, 1 GiB) measured in this process.
W GB/s counts the weight bytes (N*K for FP8, 2*N*K for bf16).

Run on the GPU machine (torch present):  python3 benches/fp8_baselines.py
"""
import math
import sys

import torch

SHAPES = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
MS = [1, 64, 128, 4096]


def time_us(fn):
    for i in range(5):
        fn(i)
    torch.cuda.synchronize()
    v, i = [], 0
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(20):
            fn(i)
            i += 1
        b.record()
        b.synchronize()
        v.append(a.elapsed_time(b) * 1000.0 / 20)
    v.sort()
    return v[len(v) // 2]


def copy_gbs():
    n = 1 << 30
    src = torch.ones(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = time_us(lambda i: dst.copy_(src))
    return 2.0 * n / (us * 1e3)


def fp8_rand(shape):
    return (torch.randn(shape, device="cuda") * 50).clamp(-440, 440).to(torch.float8_e4m3fn)


def scales_a(m, k):
    # [M, K/128], column-major (stride [1, M]) as cuBLASLt wants for 1x128.
    return (torch.rand(k // 128, m, device="cuda") * 1e-2 + 1e-3).t()


def scales_b(n, k, pad4):
    # [K/128, N/128] for mat_b = w.T (K x N); column-major; K blocks rounded up to 4 when pad4.
    L = math.ceil(k / 128)
    L4 = (L + 3) // 4 * 4 if pad4 else L
    s = torch.rand(math.ceil(n / 128), L4, device="cuda") * 1e-4 + 1e-4
    return s.t()[:L, :]


def scaled_mm(a, w, sa, sb):
    return torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)


def check_recipe():
    """Finds a scale layout torch accepts and checks it against a float32 reference."""
    m, n, k = 256, 256, 512
    a, w = fp8_rand((m, k)), fp8_rand((n, k))
    for pad4 in (False, True):
        sa, sb = scales_a(m, k), scales_b(n, k, pad4)
        try:
            out = scaled_mm(a, w, sa, sb).float()
        except Exception as e:  # noqa: BLE001
            err = str(e).splitlines()[0]
            continue
        ea = a.float() * sa.repeat_interleave(128, dim=1)[:, :k]
        ew = w.float() * sb.t().repeat_interleave(128, dim=0)[:n].repeat_interleave(128, dim=1)[:, :k]
        ref = ea @ ew.t()
        rel = ((out - ref).norm() / ref.norm()).item()
        return pad4, rel
    return None, err


def main():
    torch.manual_seed(0)
    dev = torch.cuda.get_device_name()
    copy = copy_gbs()
    print(f"device: {dev}; torch {torch.__version__} (CUDA {torch.version.cuda}); device copy {copy:.0f} GB/s (read + write)")
    pad4, info = check_recipe()
    if pad4 is None:
        print(f"torch._scaled_mm block-scaled (1x128 x 128x128) unavailable: {info}")
    else:
        print(f"torch._scaled_mm block-scaled recipe OK (K-block pad to 4: {pad4}), rel err vs fp32 reference {info:.2e}")
    print(f"{'kind':<10} {'shape':<22} {'M':>6} {'us':>10} {'TFLOPS':>10} {'W GB/s':>10} {'W/copy':>8}")
    for n, k in SHAPES:
        wbytes = n * k
        nc = max(1, min(16, math.ceil((256 << 20) / wbytes)))
        ws8 = [fp8_rand((n, k)) for _ in range(nc)]
        wsb = [w.to(torch.bfloat16) for w in ws8[: max(1, min(16, math.ceil((256 << 20) / (2 * wbytes))))]]
        for m in MS:
            a8 = fp8_rand((m, k))
            ab = a8.to(torch.bfloat16)
            rows = []
            if pad4 is not None:
                sa = scales_a(m, k)
                sbs = [scales_b(n, k, pad4) for _ in range(nc)]
                try:
                    us = time_us(lambda i: scaled_mm(a8, ws8[i % nc], sa, sbs[i % nc]))
                    rows.append(("cublasLt8", us, wbytes))
                except Exception as e:  # noqa: BLE001
                    print(f"{'cublasLt8':<10} {f'{n}x{k}':<22} {m:>6}  n/a: {str(e).splitlines()[0][:80]}")
            nb = len(wsb)
            us = time_us(lambda i: ab @ wsb[i % nb].t())
            rows.append(("bf16", us, 2 * wbytes))
            for kind, us, wb in rows:
                tf = 2.0 * m * n * k / (us * 1e6)
                gbs = wb / (us * 1e3)
                print(f"{kind:<10} {f'{n}x{k}':<22} {m:>6} {us:>10.2f} {tf:>10.1f} {gbs:>10.0f} {gbs / copy:>8.2f}")
        del ws8, wsb
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
