//! The feature extractor: the activations of a pretrained network, for an image, at
//! arbitrary named layers.
//!
//! Two modes: [`FeatureExtractor::extract`] runs on plain tensors (inference only: nothing is
//! kept for a backward pass, and each intermediate activation is dropped as soon as the next
//! one exists) and [`FeatureExtractor::extract_var`] runs on a tape, so losses can be built
//! on the activations. Either way the pass stops at the deepest layer asked for.
//!
//! ```
//! use nst_features::FeatureExtractor;
//! use nst_tensor::Tensor;
//! use nst_vgg::{Arch, Vgg};
//! # fn main() -> nst_vgg::Result<()> {
//! let cpu = nst_cpu::Cpu::new(1);
//! // Random weights keep the example fast; real work loads them with
//! // `Vgg::from_safetensors` (the shapes below are the same, the values meaningful).
//! let vgg = Vgg::random_for_tests(&cpu, Arch::Vgg19, 1)?;
//! let fx = FeatureExtractor::new(&vgg, &["relu1_1", "relu4_2"])?;
//! let image = Tensor::zeros(&cpu, [1, 3, 32, 48])?; // [1, 3, H, W] in model space
//! let feats = fx.extract(&image)?;
//! assert_eq!(feats.get("relu1_1").unwrap().dims(), &[1, 64, 32, 48]);
//! assert_eq!(feats.get("relu4_2").unwrap().dims(), &[1, 512, 4, 6]);
//! // A wrong name lists the valid ones.
//! assert!(FeatureExtractor::new(&vgg, &["relu9_9"]).is_err());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use nst_autodiff::Var;
use nst_tensor::{Backend, Tensor};
use nst_vgg::{Activation, Result, Vgg};

/// Activations by layer name, in the order the layers were asked for.
#[derive(Clone, Debug)]
pub struct Features<A> {
    items: Vec<(String, A)>,
}

impl<A> Features<A> {
    /// The activation of layer `name`, if it was asked for.
    pub fn get(&self, name: &str) -> Option<&A> {
        self.items.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// `(name, activation)` pairs in the order asked for.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &A)> {
        self.items.iter().map(|(n, a)| (n.as_str(), a))
    }

    /// Consumes into `(name, activation)` pairs.
    pub fn into_vec(self) -> Vec<(String, A)> {
        self.items
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no layer was asked for.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Extracts the activations of `model` at a fixed set of named layers. It keeps a handle to
/// the network (a clone of the [`Vgg`] handle: nothing copied), so it owns what it uses: no
/// lifetime, `Send` and `Sync`, storable in a struct or moved to another thread.
#[derive(Clone)]
pub struct FeatureExtractor<B: Backend> {
    model: Vgg<B>,
    /// (name, layer index) in the order asked for.
    layers: Vec<(String, usize)>,
    deepest: usize,
}

impl<B: Backend> FeatureExtractor<B> {
    /// An extractor for the named layers (e.g. `relu1_1`, `relu4_2`, `pool3`); an unknown
    /// name is an error listing the valid ones. Duplicates are kept once.
    pub fn new<S: AsRef<str>>(model: &Vgg<B>, layers: &[S]) -> Result<Self> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for name in layers {
            let name = name.as_ref().trim();
            let idx = model.layer_index(name)?;
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.to_string(), idx));
            }
        }
        let deepest = out.iter().map(|(_, i)| *i).max().unwrap_or(0);
        Ok(FeatureExtractor {
            model: model.clone(),
            layers: out,
            deepest,
        })
    }

    /// The model.
    pub fn model(&self) -> &Vgg<B> {
        &self.model
    }

    /// The layer names, in the order asked for.
    pub fn layer_names(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|(n, _)| n.as_str())
    }

    /// About how many bytes extracting these layers from a `width x height` image takes at
    /// its peak, erring high: the parameters twice (the file as read, and the model), the
    /// image, every activation the pass makes on the way to the deepest layer (a caching
    /// allocator keeps them: a convolution fused with its ReLU makes one), and two host copies
    /// of every wanted one (copied out, and serialised for the file). The CLI checks it
    /// against `--max-memory` before any work. Measured (`nst features`, peak RSS): relu1_1
    /// and relu4_2 of 1024x768, 1.41 GB for a prediction of 1.5 GB; relu3_1 of 1500x1125,
    /// 1.80 GB for 1.9 GB.
    pub fn predicted_bytes(&self, width: usize, height: usize) -> u64 {
        let all = self.model.layers();
        let last = self.deepest.min(all.len().saturating_sub(1));
        let wanted = |i: usize| self.layers.iter().any(|(_, k)| *k == i);
        let (mut c, mut h, mut w) = (3usize, height, width);
        let (mut params, mut made, mut kept) = (0f64, 0f64, 0f64);
        let mut i = 0;
        while i <= last {
            match all[i].op {
                nst_vgg::LayerOp::Conv { cin, cout } => {
                    params += (cout * (cin * 9 + 1)) as f64;
                    c = cout;
                    // Fused with its ReLU unless the convolution's own output is wanted.
                    if i < last && !wanted(i) && all[i + 1].op == nst_vgg::LayerOp::Relu {
                        i += 1;
                    }
                }
                nst_vgg::LayerOp::Relu => {}
                nst_vgg::LayerOp::Pool => (h, w) = (h / 2, w / 2),
            }
            let out = (c * h * w) as f64;
            made += out;
            if wanted(i) {
                kept += out;
            }
            i += 1;
        }
        let floats = 2.0 * params + (3 * width * height) as f64 + made + 2.0 * kept;
        (4.0 * floats) as u64 + (64 << 20)
    }

    /// The smallest height and width the pass to the deepest layer accepts: each pooling
    /// stage on the way halves the size.
    pub fn min_input_size(&self) -> usize {
        let pools = self.model.layers()[..=self.deepest]
            .iter()
            .filter(|l| l.op == nst_vgg::LayerOp::Pool)
            .count();
        1 << pools
    }

    fn check_size(&self, dims: &[usize]) -> Result<()> {
        let min = self.min_input_size();
        if let [_, _, h, w] = *dims {
            if h < min || w < min {
                let deepest = &self.model.layers()[self.deepest].name;
                return Err(nst_vgg::Error::Input(format!(
                    "an image of {w}x{h} pixels is too small for layer {deepest}, which needs at least {min}x{min}"
                )));
            }
        }
        Ok(())
    }

    fn run<A: Activation<B> + Clone>(&self, x: A) -> Result<Features<A>> {
        let mut found: Vec<Option<A>> = vec![None; self.layers.len()];
        if !self.layers.is_empty() {
            let wanted = |i: usize| self.layers.iter().any(|(_, idx)| *idx == i);
            self.model.forward_some(x, self.deepest, &wanted, |i, a| {
                for (slot, (_, idx)) in found.iter_mut().zip(&self.layers) {
                    if *idx == i {
                        *slot = Some(a.clone());
                    }
                }
                Ok(())
            })?;
        }
        let items = self
            .layers
            .iter()
            .zip(found)
            .filter_map(|((n, _), a)| a.map(|a| (n.clone(), a)))
            .collect();
        Ok(Features { items })
    }

    /// Inference-only: activations of `x` (`[N, 3, H, W]`, model space) as plain tensors.
    pub fn extract(&self, x: &Tensor<B>) -> Result<Features<Tensor<B>>> {
        self.check_size(x.dims())?;
        self.run(x.clone())
    }

    /// On a tape: activations of `x` as variables, so losses can be built on them and
    /// differentiated w.r.t. `x`. The network's weights enter as constants.
    pub fn extract_var<'t>(&self, x: &Var<'t, B>) -> Result<Features<Var<'t, B>>> {
        self.check_size(x.shape().dims())?;
        self.run(x.clone())
    }
}
