//! VGG19 (and VGG16): the layer tables with the classic names, loading frozen weights from
//! safetensors, the image <-> model-space conversion, and a forward pass over plain tensors
//! or tape variables.

#![warn(missing_docs)]

mod arch;
pub mod convention;
mod model;
pub mod write;

pub use arch::{Arch, Layer, LayerOp, Span};
pub use convention::InputConvention;
pub use model::{Vgg, WIDTH_DIVISOR_KEY};
/// What the network runs on (defined in `nst-tensor`, implemented there for tensors and in
/// `nst-autodiff` for tape variables).
pub use nst_tensor::Activation;
pub use write::{safetensors_bytes, try_safetensors_bytes, write_safetensors, NamedTensor};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor op failed.
    #[error(transparent)]
    Tensor(#[from] nst_tensor::Error),
    /// The weights are missing, malformed or do not fit the network.
    #[error("weights: {0}")]
    Weights(String),
    /// The input does not fit the network (e.g. too small for the layers asked for).
    #[error("{0}")]
    Input(String),
    /// A layer name that the network does not have.
    #[error("unknown layer {name:?}; valid layers: {valid}")]
    UnknownLayer {
        /// The name asked for.
        name: String,
        /// The valid names, comma-separated.
        valid: String,
    },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
