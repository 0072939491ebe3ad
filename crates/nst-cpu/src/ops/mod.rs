//! The CPU implementations of the backend ops, one file per op family.

pub(crate) mod bf16;
pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod lanes;
pub(crate) mod matmul;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod winograd;

/// Elements per parallel work item for elementwise loops and fixed-split reductions.
pub(crate) const CHUNK: usize = 1 << 14;
