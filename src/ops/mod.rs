//! Op families. Each module holds the CPU reference of one family (the oracle every device
//! kernel is checked against); device dispatch sits beside it when a backend is enabled.

pub mod fp8;
