//! [`Activation`]: what a network's layers run on, a plain tensor here or a tape variable in
//! `nst-autodiff`, so the network crate needs neither the tape nor a copy of its layers.

use crate::{Backend, PoolKind, Result, Tensor};

/// Something a network can run on: a plain tensor (inference only) or a tape variable.
pub trait Activation<B: Backend>: Sized {
    /// 3x3 convolution, stride 1, padding 1, plus bias, with frozen parameters.
    fn conv(&self, weight: &Tensor<B>, bias: &Tensor<B>) -> Result<Self>;
    /// ReLU.
    fn relu(&self) -> Result<Self>;
    /// [`Activation::conv`] then [`Activation::relu`], fused where the backend can.
    fn conv_relu(&self, weight: &Tensor<B>, bias: &Tensor<B>) -> Result<Self> {
        self.conv(weight, bias)?.relu()
    }
    /// 2x2 pooling with stride 2.
    fn pool(&self, kind: PoolKind) -> Result<Self>;
}

impl<B: Backend> Activation<B> for Tensor<B> {
    fn conv(&self, weight: &Tensor<B>, bias: &Tensor<B>) -> Result<Self> {
        self.conv2d(weight, Some(bias), 1, 1)
    }
    fn relu(&self) -> Result<Self> {
        Tensor::relu(self)
    }
    fn conv_relu(&self, weight: &Tensor<B>, bias: &Tensor<B>) -> Result<Self> {
        self.conv2d_relu(weight, Some(bias), 1, 1)
    }
    fn pool(&self, kind: PoolKind) -> Result<Self> {
        self.pool2d(kind, 2, 2)
    }
}
