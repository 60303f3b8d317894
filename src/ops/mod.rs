//! Op families. Each module holds the CPU reference of one family (the oracle every device
//! kernel is checked against); device dispatch sits beside it when a backend is enabled.

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod fp8;
pub mod int8;
pub mod linear;
pub mod mla_fp8;
pub mod moe;
pub mod norm;
pub mod random;
pub mod rope;
pub mod routing;
pub mod sampling;
