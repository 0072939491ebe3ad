//! Shapes, the [`Backend`] trait and the [`Tensor`] handle that every nst crate builds on.
//!
//! This crate knows nothing of any particular device, of files or of autodiff: backends
//! (`nst-cpu`, `nst-cuda`) implement [`Backend`], and everything above works on [`Tensor<B>`].

#![warn(missing_docs)]

mod activation;
mod backend;
pub mod check;
mod counting;
mod error;
mod shape;
mod tensor;

pub use activation::Activation;
pub use backend::{host_norms, Backend, BackendCore, BackendExt, MemoryKind};
pub use counting::{Counting, Transfers};
pub use error::{Error, Result};
pub use shape::{BinaryOp, Conv2dParams, Pool2dParams, PoolKind, Shape, UnaryOp};
pub use tensor::Tensor;

/// A size in bytes for people: `3.0 GB`, `512 MB` (powers of 1000, as memory budgets are
/// written).
pub fn format_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}
