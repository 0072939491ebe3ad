//! Terms: the pieces an objective is made of, each written once, on the tape, against the
//! activations of the layers it names, in one of two shapes that an evaluator runs on the
//! whole image or tile by tile with the same code (see `docs/objective.md`).
//!
//! - A **local** term ([`Local`]) is a sum over positions of something computed from the
//!   activations at and near each position (content, total variation, temporal, per-position
//!   matching). Evaluated on a part of the image, it sums over the positions the part *owns*
//!   ([`Site::own`]); the parts' values add up to the whole image's.
//! - A **statistic** term ([`Statistic`]) is a function of a statistic summed over all
//!   positions (a Gram matrix `Σ f fᵀ`, the moments of W2, per-channel means). The term gives
//!   the contribution of the positions a part owns ([`Contribution`]) and the loss of the
//!   whole statistic. Tiled, an evaluator sums the contributions over the tiles, takes the
//!   loss and its gradient with respect to the statistic on a small tape, and back-propagates
//!   that gradient through each tile's own contribution: the tape derives every seed.

use nst_autodiff::Var;
use nst_tensor::{Backend, Error, Result, Tensor};

/// The layer name of the image itself (the network's input, in model space): terms such as
/// total variation read it like any activation.
pub const INPUT: &str = "input";

/// A window of positions: rows `y .. y + h`, columns `x .. x + w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First row.
    pub y: usize,
    /// First column.
    pub x: usize,
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
}

/// Where an activation handed to a term lies in its layer, and which of its positions the
/// evaluation owns. On the whole image, every position is owned and the origin is zero; on a
/// tile, the activation is the crop's (inner tile plus halo) and the owned positions are the
/// inner tile's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    /// The owned positions, in the activation's own coordinates.
    pub own: Window,
    /// The activation's first row and column in the whole layer.
    pub origin: (usize, usize),
    /// The whole layer's size in positions (rows, columns).
    pub full: (usize, usize),
}

impl Site {
    /// The site of a whole `h x w` layer.
    pub fn whole(h: usize, w: usize) -> Site {
        Site {
            own: Window { y: 0, x: 0, h, w },
            origin: (0, 0),
            full: (h, w),
        }
    }

    /// The site of a whole activation `[N, C, H, W]`.
    pub fn of_whole(dims: &[usize]) -> Result<Site> {
        match dims {
            [_, _, h, w] => Ok(Site::whole(*h, *w)),
            _ => Err(Error::invalid(
                "site",
                format!("expected an activation [N, C, H, W], got {dims:?}"),
            )),
        }
    }

    /// Whether the site covers its whole layer.
    pub fn is_whole(&self) -> bool {
        self.origin == (0, 0)
            && self.own.y == 0
            && self.own.x == 0
            && self.full == (self.own.h, self.own.w)
    }

    /// The owned positions in the whole layer's coordinates.
    pub fn global(&self) -> Window {
        Window {
            y: self.origin.0 + self.own.y,
            x: self.origin.1 + self.own.x,
            ..self.own
        }
    }

    /// The number of owned positions.
    pub fn owned(&self) -> usize {
        self.own.h * self.own.w
    }

    /// The owned part of `f`, the activation at this site (`[N, C, H, W]`; `f` itself when
    /// it is all owned).
    pub fn own<'t, B: Backend>(&self, f: &Var<'t, B>) -> Result<Var<'t, B>> {
        cut_var(f, &self.own)
    }

    /// The owned part of `t`, a tensor over the whole layer (`[N, C, H_full, W_full]`, e.g. a
    /// target or a mask at the layer's positions).
    pub fn cut<B: Backend>(&self, t: &Tensor<B>) -> Result<Tensor<B>> {
        let d = t.dims();
        if d.len() != 4 || (d[2], d[3]) != self.full {
            return Err(Error::invalid(
                "site",
                format!(
                    "a tensor of shape {d:?} for a layer of {}x{} positions",
                    self.full.1, self.full.0
                ),
            ));
        }
        cut(t, &self.global())
    }
}

/// The part of `t` (`[N, C, H, W]`) inside `w` (`t` itself when `w` covers it).
pub fn cut<B: Backend>(t: &Tensor<B>, w: &Window) -> Result<Tensor<B>> {
    let d = t.dims();
    let t = if w.y == 0 && w.h == d[2] {
        t.clone()
    } else {
        t.narrow(2, w.y, w.h)?
    };
    if w.x == 0 && w.w == d[3] {
        Ok(t)
    } else {
        t.narrow(3, w.x, w.w)
    }
}

/// The part of `f` (`[N, C, H, W]`) inside `w` (`f` itself when `w` covers it).
pub fn cut_var<'t, B: Backend>(f: &Var<'t, B>, w: &Window) -> Result<Var<'t, B>> {
    let d = f.shape().dims().to_vec();
    if d.len() != 4 {
        return Err(Error::invalid(
            "site",
            format!("expected an activation [N, C, H, W], got {d:?}"),
        ));
    }
    let f = if w.y == 0 && w.h == d[2] {
        f.clone()
    } else {
        f.narrow(2, w.y, w.h)?
    };
    if w.x == 0 && w.w == d[3] {
        Ok(f)
    } else {
        f.narrow(3, w.x, w.w)
    }
}

/// A local term: a sum over positions.
pub trait Local<B: Backend>: Send + Sync {
    /// The term, unweighted, summed over the positions `sites` own. `inputs[i]` is the
    /// activation of the term's `i`-th layer (the whole layer, or a tile's crop of it) and
    /// `sites[i]` says where it lies. The first layer is the term's working resolution: a
    /// tile evaluates the term when it owns positions there (its sites at other layers may
    /// own none). A term reading beyond the positions it owns declares how far with
    /// [`Term::with_reach`].
    fn loss<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Var<'t, B>>;
}

/// The per-position part of a statistic: its sum over the positions `sites` own.
pub trait Contribution<B: Backend>: Send + Sync {
    /// The contribution of the owned positions, one tensor per part of the statistic (e.g.
    /// `Σ f` and `Σ f fᵀ`). Every tile of an image returns parts of the same shapes; their
    /// sum over the tiles is the statistic of the whole image.
    fn contribution<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Vec<Var<'t, B>>>;
}

/// A statistic term: a loss of a statistic summed over every position.
pub trait Statistic<B: Backend>: Contribution<B> {
    /// The term, unweighted, from the whole image's statistic; `positions[i]` is the number
    /// of positions of the term's `i`-th layer the statistic was summed over.
    fn loss<'t>(&self, statistic: &[Var<'t, B>], positions: &[usize]) -> Result<Var<'t, B>>;
}

/// The shape of a term.
pub enum Form<B: Backend> {
    /// A sum over positions.
    Local(Box<dyn Local<B>>),
    /// A function of a statistic summed over positions.
    Statistic(Box<dyn Statistic<B>>),
}

/// One weighted term of an objective: its name (as progress lines and logs show it), the
/// layers it reads, its weight and its shape.
///
/// ```
/// use nst_autodiff::Tape;
/// use nst_loss::term::{Site, Term};
/// use nst_tensor::Tensor;
/// # fn main() -> nst_tensor::Result<()> {
/// let cpu = nst_cpu::Cpu64::new(1);
/// let target = Tensor::zeros(&cpu, [1, 2, 1, 2])?;
/// let term = nst_loss::content_term("relu4_2", target, 2.0);
/// let tape = Tape::new();
/// let f = tape.var(Tensor::from_f64(&cpu, &[1.0, 0.0, 0.0, 3.0], [1, 2, 1, 2])?);
/// // 2 · (1² + 3²) / 4
/// let v = term.evaluate(&[f.clone()], &[Site::whole(1, 2)])?;
/// assert_eq!(v.value().scalar()?, 5.0);
/// # Ok(()) }
/// ```
pub struct Term<B: Backend> {
    name: String,
    layers: Vec<String>,
    weight: f64,
    reach: usize,
    form: Form<B>,
    settings: String,
    normalized: bool,
    sized: bool,
}

impl<B: Backend> Term<B> {
    /// A local term named `name` over `layers` (the first is its working resolution).
    pub fn local(
        name: impl Into<String>,
        layers: &[&str],
        weight: f64,
        term: impl Local<B> + 'static,
    ) -> Self {
        Self::new(name, layers, weight, Form::Local(Box::new(term)))
    }

    /// A statistic term named `name` over `layers`.
    pub fn statistic(
        name: impl Into<String>,
        layers: &[&str],
        weight: f64,
        term: impl Statistic<B> + 'static,
    ) -> Self {
        Self::new(name, layers, weight, Form::Statistic(Box::new(term)))
    }

    fn new(name: impl Into<String>, layers: &[&str], weight: f64, form: Form<B>) -> Self {
        Term {
            name: name.into(),
            layers: layers.iter().map(|l| l.to_string()).collect(),
            weight,
            reach: 0,
            form,
            settings: String::new(),
            normalized: false,
            sized: false,
        }
    }

    /// A term that reads up to `reach` positions beyond those it owns, at each of its layers
    /// (total variation reads the next pixel: 1). Tiles read that much more halo.
    pub fn with_reach(mut self, reach: usize) -> Self {
        self.reach = reach;
        self
    }

    /// Records the term's settings (what changes its value besides the images), for the
    /// fingerprint that checkpoints compare on resume.
    pub fn with_settings(mut self, settings: impl Into<String>) -> Self {
        self.settings = settings.into();
        self
    }

    /// The classic `-normalize_gradients`: the gradient of the weighted term with respect to
    /// each of its layers' activations is divided by its L1 norm
    /// ([`crate::normalize_gradient`]). The norm is the whole layer's, so such a term is
    /// evaluated untiled only.
    pub fn normalized(mut self) -> Self {
        self.normalized = true;
        self
    }

    /// Marks a term whose targets fix the image's size (a content target, a mask): an
    /// image of another size is an error.
    pub fn sized(mut self) -> Self {
        self.sized = true;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The layers read, in the order the term receives them.
    pub fn layers(&self) -> &[String] {
        &self.layers
    }

    /// The weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Positions read beyond the owned ones.
    pub fn reach(&self) -> usize {
        self.reach
    }

    /// The shape.
    pub fn form(&self) -> &Form<B> {
        &self.form
    }

    /// The settings recorded with [`Term::with_settings`].
    pub fn settings(&self) -> &str {
        &self.settings
    }

    /// Whether the gradient is normalised ([`Term::normalized`]).
    pub fn is_normalized(&self) -> bool {
        self.normalized
    }

    /// Whether the image's size is fixed ([`Term::sized`]).
    pub fn is_sized(&self) -> bool {
        self.sized
    }

    /// Whether the term can be evaluated tile by tile.
    pub fn tiles(&self) -> bool {
        !self.normalized
    }

    /// The weighted term on whole activations (the untiled evaluation, and what gradient
    /// checks run): `weight · loss`, with the gradient normalisation when asked for.
    pub fn evaluate<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Var<'t, B>> {
        if inputs.len() != self.layers.len() || sites.len() != inputs.len() {
            return Err(Error::invalid(
                "term",
                format!(
                    "{}: {} inputs and {} sites for {} layers",
                    self.name,
                    inputs.len(),
                    sites.len(),
                    self.layers.len()
                ),
            ));
        }
        let normalized;
        let inputs = if self.normalized {
            normalized = inputs
                .iter()
                .map(|f| crate::normalize_gradient(f, self.weight))
                .collect::<Result<Vec<_>>>()?;
            &normalized[..]
        } else {
            inputs
        };
        let loss = match &self.form {
            Form::Local(t) => t.loss(inputs, sites)?,
            Form::Statistic(t) => {
                let stat = t.contribution(inputs, sites)?;
                let positions: Vec<usize> = sites.iter().map(Site::owned).collect();
                t.loss(&stat, &positions)?
            }
        };
        loss.scale(self.weight)
    }
}

impl<B: Backend> std::fmt::Debug for Term<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Term")
            .field("name", &self.name)
            .field("layers", &self.layers)
            .field("weight", &self.weight)
            .field("reach", &self.reach)
            .field("settings", &self.settings)
            .field("normalized", &self.normalized)
            .finish()
    }
}

/// A statistic term made of a contribution and a closure: the loss of the summed statistic
/// (`sums`, and the positions each layer's sum ran over).
///
/// ```
/// use nst_loss::term::{statistic_fn, Term};
/// # fn f<B: nst_tensor::Backend>() -> Term<B> {
/// // Σ f fᵀ / (C·P) against nothing: the Gram matrix's mean square.
/// let stat = statistic_fn(nst_loss::GramStatistic::plain(), |sums, n| {
///     let c = sums[0].shape().dims()[0];
///     sums[0].scale(1.0 / (c * n[0]) as f64)?.square()?.mean()
/// });
/// Term::statistic("energy/relu1_1", &["relu1_1"], 1.0, stat)
/// # }
/// ```
pub fn statistic_fn<B, C, F>(contribution: C, loss: F) -> impl Statistic<B>
where
    B: Backend,
    C: Contribution<B>,
    F: for<'t> Fn(&[Var<'t, B>], &[usize]) -> Result<Var<'t, B>> + Send + Sync,
{
    StatisticFn { contribution, loss }
}

struct StatisticFn<C, F> {
    contribution: C,
    loss: F,
}

impl<B, C, F> Contribution<B> for StatisticFn<C, F>
where
    B: Backend,
    C: Contribution<B>,
    F: Send + Sync,
{
    fn contribution<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Vec<Var<'t, B>>> {
        self.contribution.contribution(inputs, sites)
    }
}

impl<B, C, F> Statistic<B> for StatisticFn<C, F>
where
    B: Backend,
    C: Contribution<B>,
    F: for<'t> Fn(&[Var<'t, B>], &[usize]) -> Result<Var<'t, B>> + Send + Sync,
{
    fn loss<'t>(&self, statistic: &[Var<'t, B>], positions: &[usize]) -> Result<Var<'t, B>> {
        (self.loss)(statistic, positions)
    }
}
