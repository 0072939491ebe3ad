//! The VGG model: its layer table and frozen parameters on a backend, and a forward pass that
//! stops at the deepest layer asked for.

use crate::{Arch, Error, InputConvention, Layer, LayerOp, Result};
use nst_tensor::{Activation, Backend, PoolKind, Tensor};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A VGG network's convolutional part with frozen weights on backend `B`: a handle, cheap to
/// clone (the layers and weights are shared behind an `Arc`, never copied), `Send` and
/// `Sync`, so whatever uses the network (a feature extractor, an objective, a render session)
/// keeps a handle of its own rather than a borrow.
pub struct Vgg<B: Backend> {
    net: Arc<Net<B>>,
    /// This handle's pooling (max by default): a setting of the handle, so two handles can
    /// share the weights and pool differently.
    pooling: PoolKind,
}

impl<B: Backend> Clone for Vgg<B> {
    fn clone(&self) -> Self {
        Vgg {
            net: Arc::clone(&self.net),
            pooling: self.pooling,
        }
    }
}

/// What a [`Vgg`] handle shares.
struct Net<B: Backend> {
    arch: Arch,
    layers: Vec<Layer>,
    /// (weight, bias) per layer index; `None` for ReLU and pooling layers.
    params: Vec<Option<(Tensor<B>, Tensor<B>)>>,
    convention: InputConvention,
    metadata: BTreeMap<String, String>,
    /// The backend the weights live on.
    backend: B,
}

/// The layer table of `arch` and, per layer, the (weight, bias) that `make(layer, cin, cout)`
/// gives each convolution (`None` for ReLU and pooling layers).
#[allow(clippy::type_complexity)]
fn conv_params<B: Backend>(
    layers: Vec<Layer>,
    mut make: impl FnMut(&Layer, usize, usize) -> Result<(Tensor<B>, Tensor<B>)>,
) -> Result<(Vec<Layer>, Vec<Option<(Tensor<B>, Tensor<B>)>>)> {
    let params = layers
        .iter()
        .map(|layer| match layer.op {
            LayerOp::Conv { cin, cout } => make(layer, cin, cout).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((layers, params))
}

/// The safetensors metadata key of a network whose convolutions are narrower than the
/// architecture's by a whole factor (the test models of [`Vgg::random_narrow_for_tests`]);
/// absent means 1, the real network.
pub const WIDTH_DIVISOR_KEY: &str = "nst.width_divisor";

/// The layer table of `arch` with every convolution's width divided by `divisor` (the
/// input's 3 channels stay 3; at least 1 channel each).
fn narrowed(arch: Arch, divisor: usize) -> Vec<Layer> {
    let narrow = |c: usize| if c == 3 { 3 } else { (c / divisor).max(1) };
    arch.layers()
        .into_iter()
        .map(|mut l| {
            if let LayerOp::Conv { cin, cout } = l.op {
                l.op = LayerOp::Conv {
                    cin: narrow(cin),
                    cout: narrow(cout),
                };
            }
            l
        })
        .collect()
}

fn f32s(view: &safetensors::tensor::TensorView<'_>, name: &str) -> Result<Vec<f32>> {
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(Error::Weights(format!(
            "{name} has dtype {:?}, expected F32",
            view.dtype()
        )));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl<B: Backend> Vgg<B> {
    /// A handle to `net`, with max pooling.
    fn from_net(net: Net<B>) -> Self {
        Vgg {
            net: Arc::new(net),
            pooling: PoolKind::Max,
        }
    }

    /// Loads the network from safetensors bytes in nst's layout (`convB_I.weight`
    /// `[out, in, 3, 3]` and `convB_I.bias` `[out]`), validating every name and shape. The
    /// architecture is VGG19 when 16 convolutions are present, VGG16 for 13. The input
    /// convention comes from the metadata (Caffe BGR when absent).
    pub fn from_safetensors(backend: &B, bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Weights(format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::Weights(format!("not a valid safetensors file: {e}")))?;
        let metadata: BTreeMap<String, String> = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let convention = match metadata.get(crate::convention::METADATA_KEY) {
            Some(v) => InputConvention::from_metadata(v)?,
            None => InputConvention::CaffeBgr,
        };
        let n_conv = st.names().iter().filter(|n| n.ends_with(".weight")).count();
        let arch = match n_conv {
            16 => Arch::Vgg19,
            13 => Arch::Vgg16,
            n => {
                return Err(Error::Weights(format!(
                    "expected 16 (VGG19) or 13 (VGG16) convolution weights, found {n}"
                )))
            }
        };
        let divisor = match metadata.get(WIDTH_DIVISOR_KEY) {
            None => 1,
            Some(v) => v.parse::<usize>().ok().filter(|d| *d >= 1).ok_or_else(|| {
                Error::Weights(format!(
                    "metadata {WIDTH_DIVISOR_KEY} is {v:?}, expected a whole number from 1"
                ))
            })?,
        };
        let (layers, params) = conv_params(narrowed(arch, divisor), |layer, cin, cout| {
            let load = |suffix: &str, shape: &[usize]| -> Result<Tensor<B>> {
                let name = format!("{}.{suffix}", layer.name);
                let view = st
                    .tensor(&name)
                    .map_err(|_| Error::Weights(format!("missing tensor {name}")))?;
                if view.shape() != shape {
                    return Err(Error::Weights(format!(
                        "{name} has shape {:?}, expected {shape:?}",
                        view.shape()
                    )));
                }
                let data = f32s(&view, &name)?;
                if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                    return Err(Error::Weights(format!(
                        "{name} holds a non-finite value at {i}"
                    )));
                }
                Ok(Tensor::from_f32(backend, &data, shape.to_vec())?)
            };
            Ok((load("weight", &[cout, cin, 3, 3])?, load("bias", &[cout])?))
        })?;
        Ok(Vgg::from_net(Net {
            arch,
            layers,
            params,
            convention,
            metadata,
            backend: backend.clone(),
        }))
    }

    /// **For tests and documentation only**: the network `arch` with random weights (Kaiming
    /// uniform, from a fixed generator seeded by `seed`; biases 0.01), built in memory so an
    /// example runs without the 550 MB weight file. Its activations have the right shapes and
    /// sensible magnitudes, but it has learnt nothing: losses and renders made with it do
    /// not look like style transfer. Load real weights with [`Vgg::from_safetensors`].
    ///
    /// ```
    /// use nst_vgg::{Arch, Vgg};
    /// let cpu = nst_cpu::Cpu::new(1);
    /// let vgg = Vgg::random_for_tests(&cpu, Arch::Vgg19, 7).unwrap();
    /// assert_eq!(vgg.layer_index("relu4_2").unwrap(), 22);
    /// ```
    pub fn random_for_tests(backend: &B, arch: Arch, seed: u64) -> Result<Self> {
        Self::random_narrow_for_tests(backend, arch, 1, seed)
    }

    /// **For tests only**: [`Vgg::random_for_tests`] with every convolution's width divided
    /// by `divisor` (the input's 3 channels stay 3; at least 1 channel each). The layer
    /// names, the pooling and so every spatial property (receptive fields, alignment, the
    /// tiles' halos) are VGG's, at a fraction of the arithmetic (about `1/divisor²`): the
    /// model for tests of properties that hold for any weights and widths, such as exact
    /// tiling.
    ///
    /// ```
    /// use nst_vgg::{Arch, LayerOp, Vgg};
    /// let cpu = nst_cpu::Cpu::new(1);
    /// let vgg = Vgg::random_narrow_for_tests(&cpu, Arch::Vgg19, 8, 7).unwrap();
    /// let i = vgg.layer_index("conv5_1").unwrap();
    /// assert!(matches!(vgg.layers()[i].op, LayerOp::Conv { cin: 64, cout: 64 }));
    /// ```
    pub fn random_narrow_for_tests(
        backend: &B,
        arch: Arch,
        divisor: usize,
        seed: u64,
    ) -> Result<Self> {
        if divisor == 0 {
            return Err(Error::Weights("a width divisor must be at least 1".into()));
        }
        let table = narrowed(arch, divisor);
        let mut state = seed ^ 0x5eed_5eed_5eed_5eed;
        // SplitMix64, mapped to [-1, 1).
        let mut uniform = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let (layers, params) = conv_params(table, |_, cin, cout| {
            let bound = (6.0 / (9 * cin) as f32).sqrt();
            let w: Vec<f32> = (0..cout * cin * 9).map(|_| uniform() * bound).collect();
            Ok((
                Tensor::from_f32(backend, &w, [cout, cin, 3, 3])?,
                Tensor::from_f32(backend, &vec![0.01; cout], [cout])?,
            ))
        })?;
        Ok(Vgg::from_net(Net {
            arch,
            layers,
            params,
            convention: InputConvention::CaffeBgr,
            metadata: BTreeMap::from([
                (
                    "nst.random_for_tests".to_string(),
                    format!("{seed}/{divisor}"),
                ),
                (WIDTH_DIVISOR_KEY.to_string(), divisor.to_string()),
            ]),
            backend: backend.clone(),
        }))
    }

    /// The network as safetensors bytes in nst's layout: what [`Vgg::from_safetensors`]
    /// reads back to the same network (weights, input convention and metadata, including
    /// the width divisor of a narrow test model).
    ///
    /// ```
    /// use nst_vgg::{Arch, Vgg};
    /// let cpu = nst_cpu::Cpu::new(1);
    /// let vgg = Vgg::random_narrow_for_tests(&cpu, Arch::Vgg19, 16, 7).unwrap();
    /// let back = Vgg::from_safetensors(&cpu, &vgg.to_safetensors().unwrap()).unwrap();
    /// assert_eq!(back.layers(), vgg.layers());
    /// ```
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let tensors = self.named_tensors()?;
        let mut metadata = self.net.metadata.clone();
        metadata.insert(
            crate::convention::METADATA_KEY.to_string(),
            self.net.convention.metadata().to_string(),
        );
        Ok(crate::safetensors_bytes(&metadata, &tensors))
    }

    /// Every convolution's weight and bias as `(name, shape, values)`, in layer order.
    fn named_tensors(&self) -> Result<Vec<crate::NamedTensor>> {
        let mut tensors = Vec::new();
        for (layer, p) in self.net.layers.iter().zip(&self.net.params) {
            if let Some((w, b)) = p {
                for (suffix, t) in [("weight", w), ("bias", b)] {
                    let name = format!("{}.{suffix}", layer.name);
                    tensors.push((name, t.shape().dims().to_vec(), t.to_f32()?));
                }
            }
        }
        Ok(tensors)
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> &B {
        &self.net.backend
    }

    /// The same network with another pooling (max by default; average as in the paper's
    /// variant).
    pub fn with_pooling(mut self, pooling: PoolKind) -> Self {
        self.pooling = pooling;
        self
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.net.arch
    }

    /// The pooling used.
    pub fn pooling(&self) -> PoolKind {
        self.pooling
    }

    /// How the network expects its input.
    pub fn convention(&self) -> InputConvention {
        self.net.convention
    }

    /// The safetensors metadata of the weights.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.net.metadata
    }

    /// The layer table.
    pub fn layers(&self) -> &[Layer] {
        &self.net.layers
    }

    /// The index of a layer by name, or an error listing the valid names.
    pub fn layer_index(&self, name: &str) -> Result<usize> {
        self.net
            .layers
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| Error::UnknownLayer {
                name: name.to_string(),
                valid: self
                    .net
                    .layers
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The channels of layer `index`'s output: those of the last convolution up to it (3,
    /// the image's, before the first).
    pub fn channels(&self, index: usize) -> usize {
        self.net.layers[..=index.min(self.net.layers.len().saturating_sub(1))]
            .iter()
            .rev()
            .find_map(|l| match l.op {
                LayerOp::Conv { cout, .. } => Some(cout),
                _ => None,
            })
            .unwrap_or(3)
    }

    /// The parameters (weight, bias) of a convolution layer.
    pub fn conv_params(&self, index: usize) -> Option<&(Tensor<B>, Tensor<B>)> {
        self.net.params.get(index).and_then(|p| p.as_ref())
    }

    /// Runs the layers `0..=last` on `x` (`[N, 3, H, W]` in model space), calling `visit`
    /// with each layer's index and output. Nothing past `last` is computed.
    pub fn forward<A: Activation<B>>(
        &self,
        x: A,
        last: usize,
        visit: impl FnMut(usize, &A) -> Result<()>,
    ) -> Result<()> {
        self.forward_some(x, last, &|_| true, visit)
    }

    /// [`Vgg::forward`], calling `visit` only for the layers `wanted` accepts. A convolution
    /// whose own output is not wanted runs fused with the ReLU after it, which saves a pass
    /// over memory and a buffer the size of the output.
    pub fn forward_some<A: Activation<B>>(
        &self,
        x: A,
        last: usize,
        wanted: &dyn Fn(usize) -> bool,
        visit: impl FnMut(usize, &A) -> Result<()>,
    ) -> Result<()> {
        self.forward_range(x, 0, last, wanted, visit).map(|_| ())
    }

    /// Runs the layers `first..=last` on `x`, the output of layer `first − 1` (the image
    /// when `first` is 0), calling `visit` for the layers `wanted` accepts, and returns the
    /// output of `last`. Splitting a pass in two ranges lets a caller keep the tape of one
    /// part only.
    pub fn forward_range<A: Activation<B>>(
        &self,
        x: A,
        first: usize,
        last: usize,
        wanted: &dyn Fn(usize) -> bool,
        mut visit: impl FnMut(usize, &A) -> Result<()>,
    ) -> Result<A> {
        let mut h = x;
        let mut i = first;
        while i <= last.min(self.net.layers.len().saturating_sub(1)) {
            let layer = &self.net.layers[i];
            let fuse = i < last
                && !wanted(i)
                && matches!(
                    self.net.layers.get(i + 1).map(|l| &l.op),
                    Some(LayerOp::Relu)
                );
            h = match (&layer.op, &self.net.params[i]) {
                (LayerOp::Conv { .. }, Some((w, b))) if fuse => {
                    i += 1;
                    h.conv_relu(w, b)?
                }
                (LayerOp::Conv { .. }, Some((w, b))) => h.conv(w, b)?,
                (LayerOp::Relu, _) => h.relu()?,
                (LayerOp::Pool, _) => h.pool(self.pooling)?,
                (LayerOp::Conv { .. }, None) => {
                    return Err(Error::Weights(format!("{} has no weights", layer.name)))
                }
            };
            if wanted(i) {
                visit(i, &h)?;
            }
            i += 1;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nst_cpu::Cpu;

    /// A narrow test model's file reads back to the same network and weights; its
    /// divisor is what makes the narrow shapes valid, and a bad divisor is a clear error.
    #[test]
    fn narrow_models_round_trip_and_their_divisor_is_checked() {
        let cpu = Cpu::new(1);
        let vgg = Vgg::random_narrow_for_tests(&cpu, Arch::Vgg19, 8, 3).unwrap();
        let bytes = vgg.to_safetensors().unwrap();
        assert_eq!(bytes, vgg.to_safetensors().unwrap(), "deterministic bytes");
        let back = Vgg::from_safetensors(&cpu, &bytes).unwrap();
        assert_eq!(back.layers(), vgg.layers());
        assert_eq!(back.convention(), vgg.convention());
        let mut meta = back.metadata().clone();
        meta.remove(crate::convention::METADATA_KEY);
        assert_eq!(&meta, vgg.metadata());
        for i in 0..vgg.layers().len() {
            if let (Some(a), Some(b)) = (vgg.conv_params(i), back.conv_params(i)) {
                assert_eq!(a.0.to_f32().unwrap(), b.0.to_f32().unwrap());
                assert_eq!(a.1.to_f32().unwrap(), b.1.to_f32().unwrap());
            }
        }
        // The same tensors under another divisor (or none) do not have the shapes it implies.
        let with = |divisor: &str| {
            let mut meta = vgg.metadata().clone();
            meta.insert(WIDTH_DIVISOR_KEY.to_string(), divisor.to_string());
            let tensors = vgg.named_tensors().unwrap();
            Vgg::from_safetensors(&cpu, &crate::safetensors_bytes(&meta, &tensors))
        };
        let err = |r: Result<Vgg<Cpu>>| r.err().expect("refused").to_string();
        assert!(err(with("4")).contains("conv1_1.weight has shape [8, 3, 3, 3], expected [16"));
        assert!(err(with("1")).contains("expected [64, 3, 3, 3]"));
        for bad in ["0", "-2", "eight", ""] {
            assert!(err(with(bad)).contains(WIDTH_DIVISOR_KEY), "{bad:?}");
        }
        assert!(with("8").is_ok());
    }
}
