//! Length and geometry checks for every [`crate::Backend`] op, so a backend can refuse a
//! call whose buffers do not match its parameters before touching memory: calling a backend
//! directly with hand-built parameters is an error, never an out-of-bounds access.
//!
//! Each check costs a few integer operations (lengths only, never the data), and all the
//! arithmetic is checked, so no parameters can overflow or underflow it.

use crate::{Conv2dParams, Error, Pool2dParams, Result, Shape};

fn product(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::invalid(op, format!("the size {dims:?} overflows")))
}

fn expect_len(op: &'static str, what: &str, len: usize, want: usize) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{what} has {len} elements, expected {want}"),
        ))
    }
}

impl Conv2dParams {
    /// Checks the geometry: positive kernel and stride, a kernel no larger than the padded
    /// input, and sizes that do not overflow.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.stride == 0 || self.kh == 0 || self.kw == 0 {
            return Err(Error::invalid(op, "the kernel and stride must be positive"));
        }
        let padded = |n: usize| {
            self.padding
                .checked_mul(2)
                .and_then(|p| p.checked_add(n))
                .ok_or_else(|| Error::invalid(op, "the padding overflows"))
        };
        if padded(self.in_h)? < self.kh || padded(self.in_w)? < self.kw {
            return Err(Error::invalid(
                op,
                format!(
                    "a {}x{} kernel is larger than the padded {}x{} input",
                    self.kh, self.kw, self.in_h, self.in_w
                ),
            ));
        }
        product(op, &[self.batch, self.in_channels, self.in_h, self.in_w])?;
        product(op, &[self.out_channels, self.in_channels, self.kh, self.kw])?;
        product(
            op,
            &[self.batch, self.out_channels, self.out_h(), self.out_w()],
        )?;
        // im2col's column buffer.
        product(
            op,
            &[
                self.in_channels,
                self.kh,
                self.kw,
                self.out_h(),
                self.out_w(),
            ],
        )?;
        Ok(())
    }

    /// Checks a forward convolution's buffers: input, weights and bias.
    pub fn check_forward(
        &self,
        op: &'static str,
        x: usize,
        w: usize,
        bias: Option<usize>,
    ) -> Result<()> {
        self.validate(op)?;
        expect_len(op, "the input", x, self.input_shape().numel())?;
        expect_len(op, "the weights", w, self.weight_shape().numel())?;
        if let Some(b) = bias {
            expect_len(op, "the bias", b, self.out_channels)?;
        }
        Ok(())
    }

    /// Checks an input-gradient convolution's buffers: output gradient and weights.
    pub fn check_backward_input(&self, op: &'static str, dy: usize, w: usize) -> Result<()> {
        self.validate(op)?;
        expect_len(op, "the output gradient", dy, self.output_shape().numel())?;
        expect_len(op, "the weights", w, self.weight_shape().numel())
    }

    /// Checks a weight-gradient convolution's buffers: input and output gradient.
    pub fn check_backward_weight(&self, op: &'static str, x: usize, dy: usize) -> Result<()> {
        self.validate(op)?;
        expect_len(op, "the input", x, self.input_shape().numel())?;
        expect_len(op, "the output gradient", dy, self.output_shape().numel())
    }
}

impl Pool2dParams {
    /// Checks the geometry and the input's length (and the output gradient's, when given).
    pub fn check(&self, op: &'static str, x: usize, dy: Option<usize>) -> Result<()> {
        if self.kernel == 0 || self.stride == 0 {
            return Err(Error::invalid(op, "the window and stride must be positive"));
        }
        if self.in_h < self.kernel || self.in_w < self.kernel {
            return Err(Error::invalid(
                op,
                format!(
                    "a {} window is larger than the {}x{} input",
                    self.kernel, self.in_h, self.in_w
                ),
            ));
        }
        let n = product(op, &[self.batch, self.channels, self.in_h, self.in_w])?;
        expect_len(op, "the input", x, n)?;
        if let Some(dy) = dy {
            let m = product(op, &[self.batch, self.channels, self.out_h(), self.out_w()])?;
            expect_len(op, "the output gradient", dy, m)?;
        }
        Ok(())
    }
}

/// Checks a buffer of `len` elements against `shape`, and `axis` against its rank.
pub fn shape_axis(op: &'static str, len: usize, shape: &Shape, axis: usize) -> Result<()> {
    let n = product(op, shape.dims())?;
    expect_len(op, "the buffer", len, n)?;
    if axis >= shape.rank() {
        return Err(Error::invalid(
            op,
            format!("axis {axis} of a rank-{} shape", shape.rank()),
        ));
    }
    Ok(())
}

/// Checks a broadcast of a buffer of `len` elements from `from` to `to`.
pub fn broadcast(op: &'static str, len: usize, from: &Shape, to: &Shape) -> Result<()> {
    let n = product(op, from.dims())?;
    product(op, to.dims())?;
    expect_len(op, "the buffer", len, n)?;
    let fits = from.rank() == to.rank()
        && from
            .dims()
            .iter()
            .zip(to.dims())
            .all(|(&f, &t)| f == 1 || f == t);
    if !fits && len != 1 {
        return Err(Error::invalid(
            op,
            format!("cannot broadcast {from} to {to}"),
        ));
    }
    Ok(())
}

/// Checks a narrow of `len` entries from `start` along `axis` of a buffer of `n` elements
/// and `shape`.
pub fn narrow(
    op: &'static str,
    n: usize,
    shape: &Shape,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<()> {
    shape_axis(op, n, shape, axis)?;
    match start.checked_add(len) {
        Some(end) if end <= shape.dim(axis) => Ok(()),
        _ => Err(Error::invalid(
            op,
            format!("range {start}+{len} out of bounds for axis {axis} of {shape}"),
        )),
    }
}

/// Checks the adjoint of a narrow: `dy` of `n` elements and `shape` placed at `start` along
/// `axis` of length `full`.
pub fn narrow_backward(
    op: &'static str,
    n: usize,
    shape: &Shape,
    axis: usize,
    start: usize,
    full: usize,
) -> Result<()> {
    shape_axis(op, n, shape, axis)?;
    match start.checked_add(shape.dim(axis)) {
        Some(end) if end <= full => {
            let mut dims = shape.dims().to_vec();
            dims[axis] = full;
            product(op, &dims).map(|_| ())
        }
        _ => Err(Error::invalid(
            op,
            format!("a slice of {shape} at {start} exceeds length {full}"),
        )),
    }
}

/// Checks a matrix product's buffers: `a` is `m x k`, `b` is `k x n` (either stored
/// transposed).
pub fn matmul(op: &'static str, a: usize, b: usize, m: usize, k: usize, n: usize) -> Result<()> {
    expect_len(op, "the left operand", a, product(op, &[m, k])?)?;
    expect_len(op, "the right operand", b, product(op, &[k, n])?)?;
    product(op, &[m, n]).map(|_| ())
}

/// [`crate::BackendExt::clamp_channels`]: a positive plane length dividing the buffer, and at
/// least one range, each `lo <= hi`.
pub fn clamp_channels(
    op: &'static str,
    len: usize,
    plane: usize,
    ranges: &[(f32, f32)],
) -> Result<()> {
    if plane == 0 || !len.is_multiple_of(plane) {
        return Err(Error::invalid(
            op,
            format!("planes of {plane} elements do not divide a buffer of {len}"),
        ));
    }
    if ranges.is_empty()
        || ranges
            .iter()
            .any(|(lo, hi)| lo.partial_cmp(hi).is_none_or(|o| o.is_gt()))
    {
        return Err(Error::invalid(op, format!("bad ranges {ranges:?}")));
    }
    Ok(())
}

/// [`crate::BackendExt::combine`]: one coefficient per vector, at least one vector, all of
/// length `len` (the first's); `lens` are the vectors' lengths.
pub fn combine(
    op: &'static str,
    coeffs: usize,
    lens: impl IntoIterator<Item = usize>,
) -> Result<()> {
    let lens: Vec<usize> = lens.into_iter().collect();
    if coeffs != lens.len() || lens.is_empty() {
        return Err(Error::invalid(
            op,
            format!(
                "{coeffs} coefficients for {} vectors (at least one of each)",
                lens.len()
            ),
        ));
    }
    for &l in &lens {
        expect_len(op, "a vector", l, lens[0])?;
    }
    Ok(())
}
