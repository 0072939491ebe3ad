//! The differentiable ops: each runs its forward pass through [`Tensor`] and records the
//! closure of its backward pass, which calls tensor (backend) ops only.

use crate::tape::Var;
use nst_tensor::{Backend, PoolKind, Result, Shape, Tensor};

fn grads<B: Backend>(pairs: [(bool, usize, Option<Tensor<B>>); 2]) -> Vec<(usize, Tensor<B>)> {
    pairs
        .into_iter()
        .filter_map(|(rg, id, g)| if rg { g.map(|g| (id, g)) } else { None })
        .collect()
}

impl<'t, B: Backend> Var<'t, B> {
    /// The tape this value is recorded on.
    pub fn tape(&self) -> &'t crate::Tape<B> {
        self.tape
    }

    /// The value.
    pub fn value(&self) -> &Tensor<B> {
        &self.value
    }

    /// The shape of the value.
    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }

    /// Whether a gradient flows into this value.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    fn unary_op(
        &self,
        value: Tensor<B>,
        backward: impl FnOnce(&Tensor<B>) -> Result<Tensor<B>> + 'static,
    ) -> Var<'t, B> {
        let id = self.id;
        self.tape.record(value, self.requires_grad, move |g| {
            Ok(vec![(id, backward(g)?)])
        })
    }

    /// Refuses an operand recorded on another tape (its node id would mean another node here).
    fn same_tape(&self, other: &Self, op: &'static str) -> Result<()> {
        if std::ptr::eq(self.tape, other.tape) {
            Ok(())
        } else {
            Err(nst_tensor::Error::invalid(
                op,
                "the operands belong to different tapes",
            ))
        }
    }

    /// `a + b`.
    pub fn add(&self, rhs: &Self) -> Result<Self> {
        self.same_tape(rhs, "add")?;
        let y = self.value.add(&rhs.value)?;
        let (a, b) = ((self.requires_grad, self.id), (rhs.requires_grad, rhs.id));
        Ok(self.tape.record(y, a.0 || b.0, move |g| {
            Ok(grads([
                (a.0, a.1, Some(g.clone())),
                (b.0, b.1, Some(g.clone())),
            ]))
        }))
    }

    /// `a - b`.
    pub fn sub(&self, rhs: &Self) -> Result<Self> {
        self.same_tape(rhs, "sub")?;
        let y = self.value.sub(&rhs.value)?;
        let (a, b) = ((self.requires_grad, self.id), (rhs.requires_grad, rhs.id));
        Ok(self.tape.record(y, a.0 || b.0, move |g| {
            let gb = if b.0 { Some(g.scale(-1.0)?) } else { None };
            Ok(grads([(a.0, a.1, Some(g.clone())), (b.0, b.1, gb)]))
        }))
    }

    /// `a * b`, elementwise.
    pub fn mul(&self, rhs: &Self) -> Result<Self> {
        self.same_tape(rhs, "mul")?;
        let y = self.value.mul(&rhs.value)?;
        let (a, b) = ((self.requires_grad, self.id), (rhs.requires_grad, rhs.id));
        let (av, bv) = (
            b.0.then(|| self.value.clone()),
            a.0.then(|| rhs.value.clone()),
        );
        Ok(self.tape.record(y, a.0 || b.0, move |g| {
            let ga = bv.map(|bv| g.mul(&bv)).transpose()?;
            let gb = av.map(|av| g.mul(&av)).transpose()?;
            Ok(grads([(a.0, a.1, ga), (b.0, b.1, gb)]))
        }))
    }

    /// `a / b`, elementwise.
    pub fn div(&self, rhs: &Self) -> Result<Self> {
        self.same_tape(rhs, "div")?;
        let y = self.value.div(&rhs.value)?;
        let (a, b) = ((self.requires_grad, self.id), (rhs.requires_grad, rhs.id));
        let bv = rhs.value.clone();
        let out = b.0.then(|| y.clone());
        Ok(self.tape.record(y, a.0 || b.0, move |g| {
            let q = g.div(&bv)?;
            // d(a/b)/db = −(a/b)/b.
            let gb = out.map(|o| q.mul(&o)?.scale(-1.0)).transpose()?;
            Ok(grads([(a.0, a.1, Some(q)), (b.0, b.1, gb)]))
        }))
    }

    /// `√x`, elementwise (the gradient is infinite at 0: keep `x` positive).
    pub fn sqrt(&self) -> Result<Self> {
        let y = self.value.sqrt()?;
        let out = y.clone();
        Ok(self.unary_op(y, move |g| g.div(&out)?.scale(0.5)))
    }

    /// `x * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Self> {
        let y = self.value.affine(mul, add)?;
        Ok(self.unary_op(y, move |g| g.scale(mul)))
    }

    /// `x * s`.
    pub fn scale(&self, s: f64) -> Result<Self> {
        self.affine(s, 0.0)
    }

    /// `x + c`.
    pub fn offset(&self, c: f64) -> Result<Self> {
        self.affine(1.0, c)
    }

    /// `x²`.
    pub fn square(&self) -> Result<Self> {
        let y = self.value.square()?;
        let x = self.value.clone();
        Ok(self.unary_op(y, move |g| g.mul(&x)?.scale(2.0)))
    }

    /// `max(x, 0)`; the gradient at 0 is 0.
    pub fn relu(&self) -> Result<Self> {
        let y = self.value.relu()?;
        let out = y.clone();
        Ok(self.unary_op(y, move |g| out.binary(nst_tensor::BinaryOp::ReluGrad, g)))
    }

    /// `eˣ`.
    pub fn exp(&self) -> Result<Self> {
        let y = self.value.exp()?;
        let out = y.clone();
        Ok(self.unary_op(y, move |g| g.mul(&out)))
    }

    /// The sum of all elements (a scalar of shape `[]`).
    pub fn sum(&self) -> Result<Self> {
        let y = self.value.sum()?;
        let shape = self.shape().clone();
        Ok(self.unary_op(y, move |g| {
            g.reshape(vec![1; shape.rank()])?.broadcast_to(shape)
        }))
    }

    /// The mean of all elements.
    pub fn mean(&self) -> Result<Self> {
        self.sum()?.scale(1.0 / self.value.numel().max(1) as f64)
    }

    /// Sums along `axis`, kept with size 1.
    pub fn sum_axis(&self, axis: usize) -> Result<Self> {
        let y = self.value.sum_axis(axis)?;
        let shape = self.shape().clone();
        Ok(self.unary_op(y, move |g| g.broadcast_to(shape)))
    }

    /// Means along `axis`, kept with size 1.
    pub fn mean_axis(&self, axis: usize) -> Result<Self> {
        let n = self.shape().dims().get(axis).copied().unwrap_or(1).max(1);
        self.sum_axis(axis)?.scale(1.0 / n as f64)
    }

    /// Repeats size-1 dimensions up to `shape`.
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Result<Self> {
        let y = self.value.broadcast_to(shape)?;
        let from = self.shape().clone();
        let to = y.shape().clone();
        Ok(self.unary_op(y, move |g| {
            let mut g = g.clone();
            for axis in 0..to.rank() {
                if from.dim(axis) == 1 && to.dim(axis) != 1 {
                    g = g.sum_axis(axis)?;
                }
            }
            Ok(g)
        }))
    }

    /// The same values under a new shape.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Self> {
        let y = self.value.reshape(shape)?;
        let from = self.shape().clone();
        Ok(self.unary_op(y, move |g| g.reshape(from)))
    }

    /// `len` entries of `axis` from `start`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        let y = self.value.narrow(axis, start, len)?;
        let full = self.shape().dim(axis);
        Ok(self.unary_op(y, move |g| g.narrow_backward(axis, start, full)))
    }

    /// The transpose of a rank-2 value.
    pub fn transpose(&self) -> Result<Self> {
        let y = self.value.transpose()?;
        Ok(self.unary_op(y, |g| g.transpose()))
    }

    /// `op(self) · op(rhs)` for rank-2 values, each optionally transposed.
    ///
    /// When both operands are the same value and exactly one is transposed (a Gram matrix
    /// `A·Aᵀ` or `Aᵀ·A`), the backward pass is one product with `G + Gᵀ` instead of two.
    pub fn matmul_t(&self, rhs: &Self, ta: bool, tb: bool) -> Result<Self> {
        self.same_tape(rhs, "matmul")?;
        let y = self.value.matmul_t(&rhs.value, ta, tb)?;
        if self.id == rhs.id && ta != tb {
            let x = self.value.clone();
            // d(A·Aᵀ) = (G + Gᵀ)·A and d(Aᵀ·A) = A·(G + Gᵀ).
            return Ok(self.unary_op(y, move |g| {
                let sym = g.add(&g.transpose()?)?;
                if tb {
                    sym.matmul(&x)
                } else {
                    x.matmul(&sym)
                }
            }));
        }
        let (a, b) = ((self.requires_grad, self.id), (rhs.requires_grad, rhs.id));
        let (av, bv) = (
            b.0.then(|| self.value.clone()),
            a.0.then(|| rhs.value.clone()),
        );
        Ok(self.tape.record(y, a.0 || b.0, move |g| {
            // With P = op(A), Q = op(B): dP = G·Qᵀ and dQ = Pᵀ·G, transposed back as needed.
            let ga = bv
                .map(|bv| {
                    if ta {
                        bv.matmul_t(g, tb, true)
                    } else {
                        g.matmul_t(&bv, false, !tb)
                    }
                })
                .transpose()?;
            let gb = av
                .map(|av| {
                    if tb {
                        g.matmul_t(&av, true, ta)
                    } else {
                        av.matmul_t(g, !ta, false)
                    }
                })
                .transpose()?;
            Ok(grads([(a.0, a.1, ga), (b.0, b.1, gb)]))
        }))
    }

    /// `self · rhs`.
    pub fn matmul(&self, rhs: &Self) -> Result<Self> {
        self.matmul_t(rhs, false, false)
    }

    /// 2-D convolution of `self` (NCHW) with `weight` (OIHW) and an optional bias.
    ///
    /// Gradients are computed only for the operands that require them: with constant
    /// (frozen) weights, only the input gradient is ever computed.
    pub fn conv2d(
        &self,
        weight: &Self,
        bias: Option<&Self>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        self.same_tape(weight, "conv2d")?;
        if let Some(b) = bias {
            self.same_tape(b, "conv2d")?;
        }
        let y = self
            .value
            .conv2d(&weight.value, bias.map(|b| &b.value), stride, padding)?;
        let p = self.value.conv2d_params(&weight.value, stride, padding)?;
        let (xg, xid) = (self.requires_grad, self.id);
        let (wg, wid) = (weight.requires_grad, weight.id);
        let (bg, bid) = bias.map_or((false, 0), |b| (b.requires_grad, b.id));
        let wv = xg.then(|| weight.value.clone());
        let xv = wg.then(|| self.value.clone());
        Ok(self.tape.record(y, xg || wg || bg, move |g| {
            let mut out = Vec::with_capacity(3);
            if let Some(w) = wv {
                out.push((xid, g.conv2d_backward_input(&w, &p)?));
            }
            if let Some(x) = xv {
                out.push((wid, g.conv2d_backward_weight(&x, &p)?));
            }
            if bg {
                let hw = p.out_h() * p.out_w();
                let db = g
                    .reshape([p.batch, p.out_channels, hw])?
                    .sum_axis(2)?
                    .sum_axis(0)?
                    .reshape([p.out_channels])?;
                out.push((bid, db));
            }
            Ok(out)
        }))
    }

    /// `relu(conv2d(self, weight, bias))` as one op: one pass over the output forward, and
    /// backward the ReLU mask is applied while the convolution reads the gradient; only the
    /// output is kept for the backward pass. With trainable weights or bias it is the two ops.
    pub fn conv2d_relu(
        &self,
        weight: &Self,
        bias: Option<&Self>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        self.same_tape(weight, "conv2d_relu")?;
        if let Some(b) = bias {
            self.same_tape(b, "conv2d_relu")?;
        }
        if weight.requires_grad || bias.is_some_and(|b| b.requires_grad) {
            return self.conv2d(weight, bias, stride, padding)?.relu();
        }
        let y = self
            .value
            .conv2d_relu(&weight.value, bias.map(|b| &b.value), stride, padding)?;
        let p = self.value.conv2d_params(&weight.value, stride, padding)?;
        let (w, out) = (weight.value.clone(), y.clone());
        Ok(self.unary_op(y, move |g| g.conv2d_relu_backward_input(&out, &w, &p)))
    }

    /// 2-D max or average pooling (floor mode, no padding).
    pub fn pool2d(&self, kind: PoolKind, kernel: usize, stride: usize) -> Result<Self> {
        let y = self.value.pool2d(kind, kernel, stride)?;
        let p = self.value.pool2d_params(kind, kernel, stride)?;
        let x = self.value.clone();
        Ok(self.unary_op(y, move |g| x.pool2d_backward(g, &p)))
    }
}

/// The network's layers on tape variables, with the parameters as constants of the tape.
impl<B: Backend> nst_tensor::Activation<B> for Var<'_, B> {
    fn conv(&self, weight: &Tensor<B>, bias: &Tensor<B>) -> Result<Self> {
        let tape = self.tape();
        let (w, b) = (tape.constant(weight.clone()), tape.constant(bias.clone()));
        self.conv2d(&w, Some(&b), 1, 1)
    }
    fn relu(&self) -> Result<Self> {
        Var::relu(self)
    }
    fn conv_relu(&self, weight: &Tensor<B>, bias: &Tensor<B>) -> Result<Self> {
        let tape = self.tape();
        let (w, b) = (tape.constant(weight.clone()), tape.constant(bias.clone()));
        self.conv2d_relu(&w, Some(&b), 1, 1)
    }
    fn pool(&self, kind: PoolKind) -> Result<Self> {
        self.pool2d(kind, 2, 2)
    }
}
