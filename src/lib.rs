//! nst, neural style transfer: one dependency that re-exports the workspace's crates.

pub use nst_autodiff as autodiff;
pub use nst_cpu as cpu;
pub use nst_features as features;
pub use nst_tensor as tensor;
pub use nst_vgg as vgg;
pub use nst_weights as weights;
