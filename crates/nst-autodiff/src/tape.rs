//! The tape: nodes in creation order, each with the closure that runs its backward pass.

use nst_tensor::{Backend, Error, Result, Tensor};
use std::cell::RefCell;

/// Maps the gradient of a node's output to the gradients of its parents, by parent id.
pub(crate) type BackwardFn<B> = Box<dyn FnOnce(&Tensor<B>) -> Result<Vec<(usize, Tensor<B>)>>>;

struct Node<B: Backend> {
    /// Whether a gradient flows into this node (it is a variable or depends on one).
    requires_grad: bool,
    /// Whether this node was made by an op (as opposed to a leaf).
    has_grad_fn: bool,
    /// The backward closure; `None` for leaves, constants and once backward has consumed it.
    backward: Option<BackwardFn<B>>,
}

/// A reverse-mode autodiff tape over backend `B`.
///
/// Nodes are pushed in creation order, which is already a topological order, so
/// [`Tape::backward`] simply walks them in reverse. Each backward closure is dropped as soon
/// as it has run, releasing what it captured.
///
/// ```
/// use nst_autodiff::Tape;
/// use nst_cpu::Cpu;
/// use nst_tensor::Tensor;
/// # fn main() -> nst_tensor::Result<()> {
/// let cpu = Cpu::new(1);
/// let tape = Tape::new();
/// let x = tape.var(Tensor::from_f32(&cpu, &[1.0, 2.0, 3.0], [3])?);
/// let loss = x.mul(&x)?.sum()?; // Σ x²
/// let grads = tape.backward(&loss)?;
/// assert_eq!(grads.get(&x).unwrap().to_f32()?, vec![2.0, 4.0, 6.0]);
/// # Ok(()) }
/// ```
pub struct Tape<B: Backend> {
    nodes: RefCell<Vec<Node<B>>>,
    /// Unique among the tapes of this process, so gradients know which tape they came from.
    id: u64,
}

/// The id of the next tape.
static NEXT_TAPE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<B: Backend> Default for Tape<B> {
    fn default() -> Self {
        Self::new()
    }
}

/// A value recorded on a [`Tape`]: its tensor and its node id. Cloning is cheap.
pub struct Var<'t, B: Backend> {
    pub(crate) tape: &'t Tape<B>,
    pub(crate) id: usize,
    pub(crate) value: Tensor<B>,
    pub(crate) requires_grad: bool,
}

impl<B: Backend> Clone for Var<'_, B> {
    fn clone(&self) -> Self {
        Var {
            tape: self.tape,
            id: self.id,
            value: self.value.clone(),
            requires_grad: self.requires_grad,
        }
    }
}

impl<B: Backend> std::fmt::Debug for Var<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var#{}({:?})", self.id, self.value)
    }
}

/// Runs tape code on plain tensors, recording nothing: every input enters as a constant, so
/// no op keeps a backward closure and the result is just a tensor. One function written on
/// [`Var`] thus serves both the objective (on the tape) and its targets (on plain tensors).
///
/// ```
/// use nst_autodiff::{no_grad, Var};
/// use nst_tensor::{Backend, Result, Tensor};
/// fn sum_sq<'t, B: Backend>(x: &Var<'t, B>) -> Result<Var<'t, B>> {
///     x.square()?.sum()
/// }
/// let cpu = nst_cpu::Cpu::new(1);
/// let x = Tensor::from_f32(&cpu, &[1.0, 2.0], [2]).unwrap();
/// let y = no_grad(&[x], |v| sum_sq(&v[0])).unwrap();
/// assert_eq!(y.to_f32().unwrap(), vec![5.0]);
/// ```
pub fn no_grad<B: Backend>(
    inputs: &[Tensor<B>],
    f: impl for<'t> FnOnce(&[Var<'t, B>]) -> Result<Var<'t, B>>,
) -> Result<Tensor<B>> {
    let tape = Tape::new();
    let vars: Vec<Var<'_, B>> = inputs.iter().map(|t| tape.constant(t.clone())).collect();
    Ok(f(&vars)?.value().clone())
}

impl<B: Backend> Tape<B> {
    /// An empty tape.
    pub fn new() -> Self {
        Tape {
            nodes: RefCell::new(Vec::new()),
            id: NEXT_TAPE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn push(&self, requires_grad: bool, backward: Option<BackwardFn<B>>) -> usize {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            requires_grad,
            has_grad_fn: backward.is_some(),
            backward,
        });
        nodes.len() - 1
    }

    /// A leaf whose gradient [`Tape::backward`] computes.
    pub fn var(&self, value: Tensor<B>) -> Var<'_, B> {
        let id = self.push(true, None);
        Var {
            tape: self,
            id,
            value,
            requires_grad: true,
        }
    }

    /// A leaf that never gets a gradient (frozen weights, targets): nothing is computed or
    /// stored for it, nor for any op whose inputs are all constants (the no-grad path that
    /// [`no_grad`] packages).
    pub fn constant(&self, value: Tensor<B>) -> Var<'_, B> {
        let id = self.push(false, None);
        Var {
            tape: self,
            id,
            value,
            requires_grad: false,
        }
    }

    /// Records the result of an op. `backward` is called only if some parent requires a
    /// gradient; it must return gradients only for parents that do.
    pub(crate) fn record(
        &self,
        value: Tensor<B>,
        requires_grad: bool,
        backward: impl FnOnce(&Tensor<B>) -> Result<Vec<(usize, Tensor<B>)>> + 'static,
    ) -> Var<'_, B> {
        let f: Option<BackwardFn<B>> = if requires_grad {
            Some(Box::new(backward))
        } else {
            None
        };
        let id = self.push(requires_grad, f);
        Var {
            tape: self,
            id,
            value,
            requires_grad,
        }
    }

    /// Records an op of the caller's own: `value` is its output, computed from `inputs`
    /// however the caller likes (any tensor ops, or off the tape entirely); `backward` maps
    /// the gradient of the output to one gradient per input, each of its input's shape. It is
    /// called only when some input requires a gradient, and its results for inputs that
    /// don't are dropped. Inputs of another tape, and gradients of the wrong number or shape,
    /// are errors.
    ///
    /// ```
    /// use nst_autodiff::{gradcheck, Tape};
    /// use nst_cpu::Cpu64;
    /// use nst_tensor::Tensor;
    /// # fn main() -> nst_tensor::Result<()> {
    /// // y = x³, with its backward dy/dx = 3x² written by hand.
    /// fn cube<'t>(x: &nst_autodiff::Var<'t, Cpu64>) -> nst_tensor::Result<nst_autodiff::Var<'t, Cpu64>> {
    ///     let v = x.value().clone();
    ///     let y = v.mul(&v)?.mul(&v)?;
    ///     x.tape().custom(y, &[x], move |g| Ok(vec![g.mul(&v.mul(&v)?.scale(3.0)?)?]))
    /// }
    /// let cpu = Cpu64::new(1);
    /// let x = Tensor::from_f64(&cpu, &[0.5, -1.0, 2.0], [3])?;
    /// // The gradient check compares the hand-written backward with central differences.
    /// let report = gradcheck::check(&[x], |_, v| cube(&v[0])?.sum(), Default::default())?;
    /// assert!(report.is_ok(), "{report}");
    /// # Ok(()) }
    /// ```
    pub fn custom<'t>(
        &'t self,
        value: Tensor<B>,
        inputs: &[&Var<'t, B>],
        backward: impl FnOnce(&Tensor<B>) -> Result<Vec<Tensor<B>>> + 'static,
    ) -> Result<Var<'t, B>> {
        if inputs.iter().any(|v| !std::ptr::eq(v.tape, self)) {
            return Err(Error::invalid("custom", "an input belongs to another tape"));
        }
        let parents: Vec<(bool, usize, nst_tensor::Shape)> = inputs
            .iter()
            .map(|v| (v.requires_grad, v.id, v.value.shape().clone()))
            .collect();
        let requires_grad = parents.iter().any(|p| p.0);
        Ok(self.record(value, requires_grad, move |g| {
            let grads = backward(g)?;
            if grads.len() != parents.len() {
                return Err(Error::invalid(
                    "custom",
                    format!(
                        "backward returned {} gradients for {} inputs",
                        grads.len(),
                        parents.len()
                    ),
                ));
            }
            let mut out = Vec::new();
            for ((needs, id, shape), grad) in parents.iter().zip(grads) {
                if grad.shape() != shape {
                    return Err(Error::invalid(
                        "custom",
                        format!(
                            "a gradient of shape {} for an input of shape {shape}",
                            grad.shape()
                        ),
                    ));
                }
                if *needs {
                    out.push((*id, grad));
                }
            }
            Ok(out)
        }))
    }

    /// The number of nodes recorded so far.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Back-propagates from the scalar `loss` and returns the gradients of the variables.
    ///
    /// Consumes the backward closures of the nodes it passes through (each is dropped once it
    /// has run, so memory is released as the walk goes); running it twice through the same
    /// nodes is an error.
    pub fn backward(&self, loss: &Var<'_, B>) -> Result<Gradients<B>> {
        if loss.value.numel() != 1 {
            return Err(Error::invalid(
                "backward",
                format!(
                    "the loss must be a scalar, got shape {}",
                    loss.value.shape()
                ),
            ));
        }
        let one = Tensor::full(loss.value.backend(), loss.value.shape().clone(), 1.0)?;
        self.backward_seeded(&[(loss.clone(), one)])
    }

    /// Back-propagates from several values at once, each with a given gradient (the
    /// derivative of some outer objective w.r.t. that value), and returns the gradients of
    /// the variables: the vector-Jacobian product of the seeds.
    ///
    /// This is how an objective whose gradient w.r.t. some activations is known in closed
    /// form (tiled evaluation, custom losses computed off the tape) enters the tape. Each
    /// seed must have its value's shape and be on this tape. Like [`Tape::backward`], it
    /// consumes the closures it runs.
    pub fn backward_seeded(&self, seeds: &[(Var<'_, B>, Tensor<B>)]) -> Result<Gradients<B>> {
        let mut n = 0;
        for (v, g) in seeds {
            if !std::ptr::eq(v.tape, self) {
                return Err(Error::invalid("backward", "a seed belongs to another tape"));
            }
            if g.shape() != v.value.shape() {
                return Err(Error::invalid(
                    "backward",
                    format!(
                        "a seed of shape {} for a value of shape {}",
                        g.shape(),
                        v.value.shape()
                    ),
                ));
            }
            n = n.max(v.id + 1);
        }
        let mut grads: Vec<Option<Tensor<B>>> = vec![None; n];
        let mut leaves: Vec<Option<Tensor<B>>> = vec![None; n];
        for (v, g) in seeds {
            if v.requires_grad {
                grads[v.id] = Some(match grads[v.id].take() {
                    Some(acc) => acc.add(g)?,
                    None => g.clone(),
                });
            }
        }
        for i in (0..n).rev() {
            let Some(g) = grads[i].take() else {
                continue;
            };
            let (f, requires_grad, has_grad_fn) = {
                let mut nodes = self.nodes.borrow_mut();
                let node = &mut nodes[i];
                (node.backward.take(), node.requires_grad, node.has_grad_fn)
            };
            match f {
                Some(f) => {
                    for (pid, pg) in f(&g)? {
                        grads[pid] = Some(match grads[pid].take() {
                            Some(acc) => acc.add(&pg)?,
                            None => pg,
                        });
                    }
                }
                None if has_grad_fn => {
                    return Err(Error::invalid(
                        "backward",
                        "backward already ran through this part of the graph",
                    ))
                }
                None if requires_grad => leaves[i] = Some(g),
                None => {}
            }
        }
        Ok(Gradients {
            grads: leaves,
            tape: self.id,
        })
    }
}

/// The gradients of the variables of a tape, from [`Tape::backward`].
pub struct Gradients<B: Backend> {
    grads: Vec<Option<Tensor<B>>>,
    tape: u64,
}

impl<B: Backend> Gradients<B> {
    /// The gradient of `var`, if the loss depends on it (`None` for a variable of another
    /// tape).
    pub fn get(&self, var: &Var<'_, B>) -> Option<&Tensor<B>> {
        if var.tape.id != self.tape {
            return None;
        }
        self.grads.get(var.id).and_then(|g| g.as_ref())
    }

    /// Takes the gradient of `var` out, if the loss depends on it (`None` for a variable of
    /// another tape).
    pub fn take(&mut self, var: &Var<'_, B>) -> Option<Tensor<B>> {
        if var.tape.id != self.tape {
            return None;
        }
        self.grads.get_mut(var.id).and_then(|g| g.take())
    }
}
