//! float8_e4m3fn conversions, 128×128 block weight dequantization and per-token-group
//! activation quantization (CPU reference).
