//! Reverse-mode automatic differentiation over any [`nst_tensor::Backend`].
//!
//! A [`Tape`] records [`Var`]s in creation order; [`Tape::backward`] walks it in reverse from a
//! scalar loss. Variables get gradients, constants (frozen weights, targets) never do. Loss
//! code reads like the formula:
//!
//! ```
//! use nst_autodiff::Tape;
//! use nst_cpu::Cpu;
//! use nst_tensor::Tensor;
//! # fn main() -> nst_tensor::Result<()> {
//! let cpu = Cpu::new(1);
//! let tape = Tape::new();
//! let x = tape.var(Tensor::from_f32(&cpu, &[1.0, 2.0], [2])?);
//! let target = tape.constant(Tensor::from_f32(&cpu, &[0.0, 0.0], [2])?);
//! let loss = x.sub(&target)?.square()?.mean()?; // mean((x - t)²)
//! let g = tape.backward(&loss)?;
//! assert_eq!(g.get(&x).unwrap().to_f32()?, vec![1.0, 2.0]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod gradcheck;
mod ops;
mod tape;

pub use tape::{no_grad, Gradients, Tape, Var};
