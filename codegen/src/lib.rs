//! dsv3-codegen: the kernel manifest and the per-vendor emitters (filled in by the codegen pipeline issue).
