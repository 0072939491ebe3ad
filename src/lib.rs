//! nst, neural style transfer: one dependency that re-exports every library crate of the
//! workspace, so research code can take any of them through `nst::…`.
//!
//! | module | crate | what it is for |
//! |---|---|---|
//! | [`tensor`] | nst-tensor | shapes, the `Backend` trait, the `Tensor` handle |
//! | [`cpu`] | nst-cpu | the CPU backend (`Cpu` for work, `Cpu64` for gradient checks) |
//! | [`autodiff`] | nst-autodiff | the tape, `Var`, finite-difference gradient checks |
//! | [`vgg`] | nst-vgg | VGG19/VGG16, the input convention, receptive fields |
//! | [`weights`] | nst-weights | reading and converting `torch.save` and safetensors weights |
//! | [`features`] | nst-features | activations at named layers, on a tape or not |
//! | [`loss`] | nst-loss | Gram matrices, content, style (Gram and W2) and total-variation losses |
//! | [`linalg`] | nst-linalg | symmetric eigendecompositions, matrix functions (LAPACK with `lapack`) |
//! | [`optim`] | nst-optim | L-BFGS, Adam, gradient descent over any vector and closure |
//! | [`style`] | nst-style | the objective, the memory planner, the render session |
//! | [`io`] | nst-io | image files with limits, EXIF orientation, 16 bits, ICC |
//! | `cuda` | nst-cuda | the CUDA backend, with the `cuda` feature |
//! | `wgpu` | nst-wgpu | the wgpu backend (Vulkan, Metal, DirectX 12), with the `wgpu` feature |
//!
//! The examples in `examples/` (`cargo run --release --example NAME`) mix these crates the way
//! research code does; `docs/research.md` is the guide.
//!
//! ```
//! // A Gram matrix of VGG19 activations on a tape, and its gradient w.r.t. the image, with
//! // random weights (the real ones come from `nst::load_vgg19`).
//! use nst::{autodiff::Tape, cpu::Cpu, features::FeatureExtractor, tensor::Tensor, vgg};
//! # fn main() -> nst::Result<()> {
//! let cpu = Cpu::new(1);
//! let net = vgg::Vgg::random_for_tests(&cpu, vgg::Arch::Vgg19, 0)?;
//! let fx = FeatureExtractor::new(&net, &["relu2_1"])?;
//! let tape = Tape::new();
//! let x = tape.var(Tensor::from_f32(&cpu, &vec![0.5; 3 * 16 * 16], [1, 3, 16, 16])?);
//! let g = nst::loss::gram(fx.extract_var(&x)?.get("relu2_1").unwrap())?;
//! assert_eq!(g.shape().dims(), &[128, 128]);
//! let grad = tape.backward(&g.sum()?)?;
//! assert_eq!(grad.get(&x).unwrap().dims(), &[1, 3, 16, 16]);
//! # Ok(()) }
//! ```

//!
//! Every crate's error converts into [`Error`], so `?` works across them in a function that
//! returns [`nst::Result`](Result):
//!
//! ```
//! use nst::{cpu::Cpu, features::FeatureExtractor, tensor::Tensor, vgg};
//! fn relu1_1_gram(cpu: &Cpu) -> nst::Result<Tensor<Cpu>> {
//!     let net = vgg::Vgg::random_for_tests(cpu, vgg::Arch::Vgg19, 0)?; // nst_vgg::Error
//!     let fx = FeatureExtractor::new(&net, &["relu1_1"])?; // nst_vgg::Error
//!     let x = Tensor::from_f32(cpu, &vec![0.5; 3 * 8 * 8], [1, 3, 8, 8])?; // nst_tensor::Error
//!     let f = fx.extract(&x)?;
//!     let g = nst::loss::gram_tensor(f.get("relu1_1").unwrap())?; // nst_tensor::Error
//!     let _ = nst::linalg::eigh(&[2.0], 1)?; // nst_linalg::Error
//!     Ok(g)
//! }
//! assert_eq!(relu1_1_gram(&Cpu::new(1)).unwrap().dims(), &[64, 64]);
//! ```

#![warn(missing_docs)]

mod error;
pub use error::{Error, Result};

pub use nst_autodiff as autodiff;
pub use nst_cpu as cpu;
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
pub use nst_cuda as cuda;
pub use nst_features as features;
pub use nst_image as image;
pub use nst_io as io;
pub use nst_linalg as linalg;
pub use nst_loss as loss;
pub use nst_optim as optim;
pub use nst_style as style;
pub use nst_tensor as tensor;
pub use nst_vgg as vgg;
pub use nst_weights as weights;
#[cfg(feature = "wgpu")]
pub use nst_wgpu as wgpu;

use std::path::PathBuf;

/// Where the weights are, by the one rule of [`nst_weights::locate`]: `$NST_WEIGHTS`, else
/// `weights/vgg19.safetensors` in the current folder or the nearest folder above it that has
/// one, else above the executable (`cargo xtask fetch-weights` makes it).
pub fn weights_path() -> PathBuf {
    nst_weights::locate(None)
}

/// Loads VGG19 from [`weights_path`] onto `backend`, with an error saying how to get the
/// weights when they are missing.
pub fn load_vgg19<B: tensor::Backend>(backend: &B) -> Result<vgg::Vgg<B>> {
    let path = weights_path();
    let bytes = std::fs::read(&path).map_err(|source| Error::WeightsFile {
        path: path.clone(),
        source,
    })?;
    Ok(vgg::Vgg::from_safetensors(backend, &bytes)?)
}
