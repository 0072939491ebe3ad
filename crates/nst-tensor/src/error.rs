//! The error type of the tensor layer and its `Result` alias.

use crate::Shape;

/// Errors raised by shape validation and by backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Operand shapes do not fit the operation.
    #[error("{op}: incompatible shapes {lhs} and {rhs}")]
    ShapeMismatch {
        /// The operation that rejected its operands.
        op: &'static str,
        /// The first operand's shape.
        lhs: Shape,
        /// The second operand's shape.
        rhs: Shape,
    },
    /// An operand has the wrong rank, an axis is out of range, or a parameter is invalid.
    #[error("{op}: {msg}")]
    Invalid {
        /// The operation that rejected its arguments.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// Host data does not match the declared shape.
    #[error("host data holds {got} elements but shape {shape} needs {expected}")]
    HostLength {
        /// The declared shape.
        shape: Shape,
        /// The number of elements the shape needs.
        expected: usize,
        /// The number of elements given.
        got: usize,
    },
    /// The backend failed (device error, missing library, out of memory…).
    #[error("backend {backend}: {msg}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// What failed.
        msg: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            msg: msg.into(),
        }
    }
}

/// The result type of every fallible tensor operation.
pub type Result<T> = std::result::Result<T, Error>;
