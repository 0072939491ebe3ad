//! Which optimizer a render uses (shared by the session and the memory planner, which
//! counts each one's state).

/// Which optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// L-BFGS, step 1, history 100, no line search (the classic choice).
    Lbfgs,
    /// L-BFGS with a strong-Wolfe line search.
    LbfgsWolfe,
    /// Adam (learning rate 10 by default).
    Adam,
    /// Plain gradient descent.
    Gd,
}

impl OptimizerKind {
    /// The default learning rate.
    pub fn default_learning_rate(self) -> f64 {
        match self {
            OptimizerKind::Lbfgs | OptimizerKind::LbfgsWolfe => 1.0,
            OptimizerKind::Adam => 10.0,
            OptimizerKind::Gd => 0.1,
        }
    }
}
