//! The style-transfer objective: targets built once, then the loss and its gradient for any
//! image (see `docs/objective.md`).

use crate::{Error, Result};
use nst_autodiff::Tape;
use nst_features::FeatureExtractor;
use nst_tensor::{Backend, Tensor};
use nst_vgg::Vgg;

/// Weights and layers of the objective.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectiveConfig {
    /// w_c, applied to every content layer.
    pub content_weight: f64,
    /// w_s, applied to every style layer.
    pub style_weight: f64,
    /// w_tv.
    pub tv_weight: f64,
    /// Content layers with a per-layer multiplier (1 by default).
    pub content_layers: Vec<(String, f64)>,
    /// Style layers with a per-layer multiplier (1 by default).
    pub style_layers: Vec<(String, f64)>,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        let one = |n: &str| (n.to_string(), 1.0);
        ObjectiveConfig {
            content_weight: 5.0,
            style_weight: 100.0,
            tv_weight: 1e-3,
            content_layers: vec![one("relu4_2")],
            style_layers: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
                .into_iter()
                .map(one)
                .collect(),
        }
    }
}

/// The loss and gradient at one image.
#[derive(Clone, Debug)]
pub struct Evaluation<B: Backend> {
    /// The total loss.
    pub total: f64,
    /// Every term by name: `content/<layer>`, `style/<layer>`, `tv`.
    pub terms: Vec<(String, f64)>,
    /// The gradient of the total w.r.t. the image, in model space (`[1, 3, H, W]`).
    pub grad: Tensor<B>,
}

/// The objective with its targets: content activations and blended style Gram matrices.
pub struct Objective<'m, B: Backend> {
    cfg: ObjectiveConfig,
    fx: FeatureExtractor<'m, B>,
    content_targets: Vec<Tensor<B>>,
    content_dims: Vec<usize>,
    style_targets: Vec<Tensor<B>>,
}

/// Normalises blend weights to sum 1 (equal weights when `blend` is empty).
pub fn normalize_blend(blend: &[f64], styles: usize) -> Result<Vec<f64>> {
    if styles == 0 {
        return Err(Error::Config("at least one style image is needed".into()));
    }
    if blend.is_empty() {
        return Ok(vec![1.0 / styles as f64; styles]);
    }
    if blend.len() != styles {
        return Err(Error::Config(format!(
            "{} style blend weights given for {styles} style images",
            blend.len()
        )));
    }
    if blend.iter().any(|b| !b.is_finite() || *b < 0.0) {
        return Err(Error::Config(format!(
            "style blend weights must be non-negative numbers, got {blend:?}"
        )));
    }
    let sum: f64 = blend.iter().sum();
    if sum <= 0.0 {
        return Err(Error::Config("style blend weights sum to zero".into()));
    }
    Ok(blend.iter().map(|b| b / sum).collect())
}

impl<'m, B: Backend> Objective<'m, B> {
    /// Builds the targets: the content image's activations at the content layers and, at
    /// each style layer, `Σ β_k G(s_k)` over the style images (`β` normalised to sum 1).
    /// Images are `[1, 3, H, W]` in model space.
    pub fn new(
        model: &'m Vgg<B>,
        cfg: &ObjectiveConfig,
        content: &Tensor<B>,
        styles: &[Tensor<B>],
        blend: &[f64],
    ) -> Result<Self> {
        for (name, w) in cfg.content_layers.iter().chain(&cfg.style_layers) {
            if !w.is_finite() || *w < 0.0 {
                return Err(Error::Config(format!(
                    "layer weight for {name} must be a non-negative number"
                )));
            }
        }
        for (what, w) in [
            ("content weight", cfg.content_weight),
            ("style weight", cfg.style_weight),
            ("tv weight", cfg.tv_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(Error::Config(format!(
                    "the {what} must be a non-negative number, got {w}"
                )));
            }
        }
        if cfg.content_layers.is_empty() && cfg.style_layers.is_empty() {
            return Err(Error::Config("no content or style layers".into()));
        }
        let beta = normalize_blend(blend, styles.len())?;
        let names: Vec<&str> = cfg
            .content_layers
            .iter()
            .chain(&cfg.style_layers)
            .map(|(n, _)| n.as_str())
            .collect();
        let fx = FeatureExtractor::new(model, &names)?;

        let content_layers: Vec<&str> =
            cfg.content_layers.iter().map(|(n, _)| n.as_str()).collect();
        let cfx = FeatureExtractor::new(model, &content_layers)?;
        let cf = cfx.extract(content)?;
        let content_targets = content_layers
            .iter()
            .map(|n| cf.get(n).cloned().expect("extracted"))
            .collect();

        let style_layers: Vec<&str> = cfg.style_layers.iter().map(|(n, _)| n.as_str()).collect();
        let sfx = FeatureExtractor::new(model, &style_layers)?;
        let mut style_targets: Vec<Option<Tensor<B>>> = vec![None; style_layers.len()];
        for (s, b) in styles.iter().zip(&beta) {
            let sf = sfx.extract(s)?;
            for (slot, n) in style_targets.iter_mut().zip(&style_layers) {
                let g = nst_loss::gram_tensor(sf.get(n).expect("extracted"))?.scale(*b)?;
                *slot = Some(match slot.take() {
                    Some(acc) => acc.add(&g)?,
                    None => g,
                });
            }
        }
        Ok(Objective {
            cfg: cfg.clone(),
            fx,
            content_targets,
            content_dims: content.dims().to_vec(),
            style_targets: style_targets
                .into_iter()
                .map(|t| t.expect("one style at least"))
                .collect(),
        })
    }

    /// The loss terms and the gradient of the total at `x` (`[1, 3, H, W]`, model space).
    pub fn evaluate(&self, x: &Tensor<B>) -> Result<Evaluation<B>> {
        if !self.content_targets.is_empty() && x.dims() != self.content_dims.as_slice() {
            return Err(Error::Config(format!(
                "the image is {}x{} but the content is {}x{}: they must have the same size",
                x.dims().get(3).unwrap_or(&0),
                x.dims().get(2).unwrap_or(&0),
                self.content_dims[3],
                self.content_dims[2],
            )));
        }
        let tape = Tape::new();
        let xv = tape.var(x.clone());
        let feats = self.fx.extract_var(&xv)?;
        let mut terms = Vec::new();
        let mut parts = Vec::new();
        for ((name, w), target) in self.cfg.content_layers.iter().zip(&self.content_targets) {
            let f = feats.get(name).expect("extracted");
            let l = nst_loss::content(f, target, self.cfg.content_weight * w)?;
            terms.push((format!("content/{name}"), l.value().scalar()?));
            parts.push(l);
        }
        for ((name, w), target) in self.cfg.style_layers.iter().zip(&self.style_targets) {
            let l = nst_loss::style(
                feats.get(name).expect("extracted"),
                target,
                self.cfg.style_weight * w,
            )?;
            terms.push((format!("style/{name}"), l.value().scalar()?));
            parts.push(l);
        }
        drop(feats);
        let tv = nst_loss::total_variation(&xv, self.cfg.tv_weight)?;
        terms.push(("tv".to_string(), tv.value().scalar()?));
        let mut total = tv;
        for p in &parts {
            total = total.add(p)?;
        }
        drop(parts);
        let value = total.value().scalar()?;
        let mut grads = tape.backward(&total)?;
        let grad = grads
            .take(&xv)
            .ok_or_else(|| Error::Config("the loss does not depend on the image".into()))?;
        Ok(Evaluation {
            total: value,
            terms,
            grad,
        })
    }
}
