//! The element types the CPU backend computes in: `f32` for work, `f64` for gradient checks.

use crate::pool::BufPool;
use num_traits::Float;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::AddAssign;

/// A floating-point element type of the CPU backend.
pub trait Element: Float + AddAssign + Sum + Default + Debug + Send + Sync + 'static {
    /// A short name for messages (`f32`, `f64`).
    const NAME: &'static str;
    /// Converts from `f64` (rounding for `f32`).
    fn of(v: f64) -> Self;
    /// Converts from `f32` (exact).
    fn of32(v: f32) -> Self;
    /// Converts to `f64` (exact).
    fn f64(self) -> f64;
    /// Converts to `f32` (rounding for `f64`).
    fn f32(self) -> f32;
    /// The process-wide pool of freed buffers of this type.
    fn pool() -> &'static BufPool<Self>;
}

static POOL_F32: BufPool<f32> = BufPool::new();

impl Element for f32 {
    const NAME: &'static str = "f32";
    fn pool() -> &'static BufPool<Self> {
        &POOL_F32
    }
    fn of(v: f64) -> Self {
        v as f32
    }
    fn of32(v: f32) -> Self {
        v
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn f32(self) -> f32 {
        self
    }
}

static POOL_F64: BufPool<f64> = BufPool::new();

impl Element for f64 {
    const NAME: &'static str = "f64";
    fn pool() -> &'static BufPool<Self> {
        &POOL_F64
    }
    fn of(v: f64) -> Self {
        v
    }
    fn of32(v: f32) -> Self {
        v as f64
    }
    fn f64(self) -> f64 {
        self
    }
    fn f32(self) -> f32 {
        self as f32
    }
}
