//! The facade's one error type: every crate's error converts into it, so research code that
//! mixes crates writes `?` everywhere and returns [`Result`].

/// Any error of the workspace's crates, each kept whole (match on the variant to reach it;
/// `Display` and `source` are the crate error's own).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor op (shapes, the backend); also what losses and autodiff return.
    #[error(transparent)]
    Tensor(#[from] nst_tensor::Error),
    /// The network: unknown layers, weights that do not fit (features return it too).
    #[error(transparent)]
    Model(#[from] nst_vgg::Error),
    /// Converting a checkpoint's weights.
    #[error(transparent)]
    Weights(#[from] nst_weights::Error),
    /// The objective, the memory plan, the render session, checkpoints.
    #[error(transparent)]
    Style(#[from] nst_style::Error),
    /// Reading or writing an image file.
    #[error(transparent)]
    Io(#[from] nst_io::Error),
    /// An eigendecomposition.
    #[error(transparent)]
    Linalg(#[from] nst_linalg::Error),
    /// The weights file cannot be read.
    #[error(
        "cannot read the weights {}: {source}; run `cargo xtask fetch-weights` or set NST_WEIGHTS",
        path.display()
    )]
    WeightsFile {
        /// Where they were looked for ([`crate::weights_path`]).
        path: std::path::PathBuf,
        /// Why they could not be read.
        source: std::io::Error,
    },
}

/// The facade's result type.
pub type Result<T> = std::result::Result<T, Error>;
