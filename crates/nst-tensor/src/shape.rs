//! Shapes of contiguous row-major tensors and the parameter structs of the windowed ops.

use std::fmt;

/// The dimensions of a contiguous, row-major tensor.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The number of elements (1 for a rank-0 shape).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// The size of dimension `axis`.
    pub fn dim(&self, axis: usize) -> usize {
        self.0[axis]
    }

    /// The shape with dimension `axis` replaced by `size`.
    pub fn with_dim(&self, axis: usize, size: usize) -> Shape {
        let mut d = self.0.clone();
        d[axis] = size;
        Shape(d)
    }

    /// Splits the shape around `axis` into (product of outer dims, dim, product of inner dims).
    pub fn split_at_axis(&self, axis: usize) -> (usize, usize, usize) {
        let outer = self.0[..axis].iter().product();
        let inner = self.0[axis + 1..].iter().product();
        (outer, self.0[axis], inner)
    }

    /// The dimensions as an `[N, C, H, W]` array, if the rank is 4.
    pub fn nchw(&self) -> Option<[usize; 4]> {
        match self.0.as_slice() {
            &[n, c, h, w] => Some([n, c, h, w]),
            _ => None,
        }
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

/// `(n + 2·padding − kernel) / stride + 1`, or 0 when the kernel does not fit (or the
/// arithmetic would overflow, or the stride is 0).
fn out_len(n: usize, padding: usize, kernel: usize, stride: usize) -> usize {
    padding
        .checked_mul(2)
        .and_then(|p| p.checked_add(n))
        .and_then(|p| p.checked_sub(kernel))
        .filter(|_| stride > 0 && kernel > 0)
        .map_or(0, |span| span / stride + 1)
}

/// Geometry of a 2-D convolution over NCHW input with OIHW weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Batch size N.
    pub batch: usize,
    /// Input channels C_in.
    pub in_channels: usize,
    /// Output channels C_out.
    pub out_channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (same in both directions).
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl Conv2dParams {
    /// Output height (0 when the kernel does not fit the padded input; never panics, see
    /// [`Conv2dParams::validate`]).
    pub fn out_h(&self) -> usize {
        out_len(self.in_h, self.padding, self.kh, self.stride)
    }

    /// Output width (0 when the kernel does not fit the padded input).
    pub fn out_w(&self) -> usize {
        out_len(self.in_w, self.padding, self.kw, self.stride)
    }

    /// Input shape `[N, C_in, H, W]`.
    pub fn input_shape(&self) -> Shape {
        Shape::new([self.batch, self.in_channels, self.in_h, self.in_w])
    }

    /// Weight shape `[C_out, C_in, kh, kw]`.
    pub fn weight_shape(&self) -> Shape {
        Shape::new([self.out_channels, self.in_channels, self.kh, self.kw])
    }

    /// Output shape `[N, C_out, H_out, W_out]`.
    pub fn output_shape(&self) -> Shape {
        Shape::new([self.batch, self.out_channels, self.out_h(), self.out_w()])
    }

    /// Floating-point operations of one forward pass (2 per multiply-add, bias excluded).
    pub fn flops(&self) -> f64 {
        2.0 * [
            self.batch,
            self.in_channels,
            self.out_channels,
            self.kh,
            self.kw,
            self.out_h(),
            self.out_w(),
        ]
        .iter()
        .map(|&d| d as f64)
        .product::<f64>()
    }
}

/// The reduction of a pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Maximum over the window; ties go to the first element in row-major order.
    Max,
    /// Mean over the window (no padding, so every window is full).
    Avg,
}

/// Geometry of a 2-D pooling over NCHW input (no padding, floor mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dParams {
    /// Max or average.
    pub kind: PoolKind,
    /// Batch size N.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Window size (square).
    pub kernel: usize,
    /// Stride (same in both directions).
    pub stride: usize,
}

impl Pool2dParams {
    /// Output height (floor mode; 0 when the window does not fit).
    pub fn out_h(&self) -> usize {
        out_len(self.in_h, 0, self.kernel, self.stride)
    }

    /// Output width (floor mode; 0 when the window does not fit).
    pub fn out_w(&self) -> usize {
        out_len(self.in_w, 0, self.kernel, self.stride)
    }

    /// Output shape `[N, C, H_out, W_out]`.
    pub fn output_shape(&self) -> Shape {
        Shape::new([self.batch, self.channels, self.out_h(), self.out_w()])
    }
}

/// Elementwise operations on one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `max(x, 0)`.
    Relu,
    /// `x²`.
    Square,
    /// `eˣ`.
    Exp,
    /// `-x`.
    Neg,
    /// `√x`.
    Sqrt,
}

/// Elementwise operations on two operands of the same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `b` where `a > 0`, else 0: the ReLU backward pass given the ReLU output `a` and gradient `b`.
    ReluGrad,
}
