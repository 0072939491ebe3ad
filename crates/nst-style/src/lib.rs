//! The style-transfer render loop (Gatys et al.): build the targets once, initialise the
//! image, optimise its pixels against content, style and total-variation losses measured on
//! a frozen VGG, and report progress.
//!
//! Extras: several style images with blend weights, style scale, coarse-to-fine scales,
//! original colours (luminance-only transfer), snapshots, and a guard that stops on a
//! non-finite loss and keeps the last good image.

#![warn(missing_docs)]

mod checkpoint;
pub mod color;
mod driver;
pub mod memory;
pub mod nn;
mod objective;
mod optimizer;
mod render;
mod settings;
pub mod targets;
pub mod tiled;

pub use checkpoint::{Checkpoint, OptimizerState};
pub use color::{ColorControl, MatrixRoot};
pub use driver::{drive, render, Ended, Flow, Observer};
pub use memory::{MemoryPlan, PlanRequest, TileChoice};
pub use nn::{NnConfig, NN_LAYERS};
pub use nst_image::Image;
pub use nst_loss::term::{Contribution, Local, Site, Statistic, Term, INPUT};
pub use objective::{
    normalize_blend, Evaluation, Objective, ObjectiveConfig, StyleLoss, CLASSIC_STYLE_LAYERS,
    NN_DEFAULT_STYLE_WEIGHT, W2_DEFAULT_STYLE_WEIGHT,
};
pub use render::{
    auto_scales, plan_scales, quality_schedule, region_mask, Init, OptimizerKind, Progress,
    Quality, RenderConfig, RenderSession, Rendered, Scale, SessionStatus, Temporal, TermSource,
    DEFAULT_SIZE, TOLERANCE_WINDOW,
};
pub use tiled::{Geometry, TilePlan, Tiling};

/// Errors of the render loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor op failed.
    #[error(transparent)]
    Tensor(#[from] nst_tensor::Error),
    /// The model failed (unknown layer, bad weights).
    #[error(transparent)]
    Model(#[from] nst_vgg::Error),
    /// The settings are inconsistent.
    #[error("{0}")]
    Config(String),
    /// A checkpoint cannot be read, or belongs to another render.
    #[error("{0}")]
    Checkpoint(String),
    /// The evaluation was cancelled through its flag ([`Objective::set_cancel`],
    /// [`RenderSession::set_cancel`]).
    #[error("cancelled")]
    Cancelled,
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
