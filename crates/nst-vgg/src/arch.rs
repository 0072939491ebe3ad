//! The layer tables of VGG19 and VGG16 with the classic layer names.

/// Which network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// VGG19: 16 convolutions in blocks of 2, 2, 4, 4, 4.
    Vgg19,
    /// VGG16: 13 convolutions in blocks of 2, 2, 3, 3, 3.
    Vgg16,
}

/// What a layer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerOp {
    /// 3x3 convolution, stride 1, padding 1, with bias.
    Conv {
        /// Input channels.
        cin: usize,
        /// Output channels.
        cout: usize,
    },
    /// ReLU.
    Relu,
    /// 2x2 pooling, stride 2 (max or average, chosen by the model).
    Pool,
}

/// One entry of the layer table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The classic name: `conv1_1`, `relu1_1`, … `pool5`.
    pub name: String,
    /// What it does.
    pub op: LayerOp,
}

const CHANNELS: [usize; 5] = [64, 128, 256, 512, 512];

impl Arch {
    /// Convolutions per block.
    fn blocks(self) -> [usize; 5] {
        match self {
            Arch::Vgg19 => [2, 2, 4, 4, 4],
            Arch::Vgg16 => [2, 2, 3, 3, 3],
        }
    }

    /// A short name (`vgg19`, `vgg16`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Vgg19 => "vgg19",
            Arch::Vgg16 => "vgg16",
        }
    }

    /// The full layer table in order: conv, relu, …, pool per block.
    pub fn layers(self) -> Vec<Layer> {
        let mut out = Vec::new();
        let mut cin = 3;
        for (b, (&n, &cout)) in self.blocks().iter().zip(&CHANNELS).enumerate() {
            for i in 1..=n {
                out.push(Layer {
                    name: format!("conv{}_{i}", b + 1),
                    op: LayerOp::Conv { cin, cout },
                });
                out.push(Layer {
                    name: format!("relu{}_{i}", b + 1),
                    op: LayerOp::Relu,
                });
                cin = cout;
            }
            out.push(Layer {
                name: format!("pool{}", b + 1),
                op: LayerOp::Pool,
            });
        }
        out
    }

    /// The convolutions: (name, cin, cout), in order.
    pub fn convs(self) -> Vec<(String, usize, usize)> {
        self.layers()
            .into_iter()
            .filter_map(|l| match l.op {
                LayerOp::Conv { cin, cout } => Some((l.name, cin, cout)),
                _ => None,
            })
            .collect()
    }

    /// The index of each convolution in torchvision's `features` sequence, in order.
    pub fn torchvision_indices(self) -> Vec<usize> {
        // torchvision interleaves conv, ReLU and (after each block) max-pool modules.
        let mut idx = Vec::new();
        let mut i = 0;
        for &n in &self.blocks() {
            for _ in 0..n {
                idx.push(i);
                i += 2;
            }
            i += 1;
        }
        idx
    }
}

/// Which input pixels one activation depends on, along one axis: position `p` of a layer
/// reads input pixels `stride·p − before ..= stride·p + after` (3x3 convolutions with
/// padding 1 widen the window by one position each side, 2x2 pooling with stride 2 doubles
/// it and the stride). Outside the image the network's own zero padding applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Input pixels per position of the layer (2 to the number of pooling layers before it).
    pub stride: usize,
    /// Pixels read before `stride·p`.
    pub before: usize,
    /// Pixels read after `stride·p`.
    pub after: usize,
}

impl Span {
    /// The span of layer `last` of `layers` (its receptive field along one axis); `None`
    /// when `last` is out of range.
    pub fn of(layers: &[Layer], last: usize) -> Option<Span> {
        let layers = layers.get(..=last)?;
        // The window [a·p + lo, a·p + hi], walked back from the layer to the input.
        let (mut a, mut lo, mut hi) = (1i64, 0i64, 0i64);
        for l in layers.iter().rev() {
            match l.op {
                LayerOp::Conv { .. } => {
                    lo -= 1;
                    hi += 1;
                }
                LayerOp::Relu => {}
                LayerOp::Pool => {
                    a *= 2;
                    lo *= 2;
                    hi = 2 * hi + 1;
                }
            }
        }
        Some(Span {
            stride: a as usize,
            before: (-lo) as usize,
            after: hi as usize,
        })
    }

    /// The margin a tile needs on each side so that every position of this layer inside the
    /// tile is computed exactly from the tile plus margin: `before` on the leading side and
    /// `after − stride + 1` on the trailing one (a tile ends at a multiple of the stride).
    pub fn margin(&self) -> usize {
        self.before
            .max((self.after + 1).saturating_sub(self.stride))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        let l = Arch::Vgg19.layers();
        assert_eq!(l.len(), 16 * 2 + 5);
        assert_eq!(l[0].name, "conv1_1");
        assert_eq!(l.last().unwrap().name, "pool5");
        assert_eq!(Arch::Vgg19.convs()[15], ("conv5_4".to_string(), 512, 512));
        assert_eq!(
            Arch::Vgg19.torchvision_indices(),
            [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
        );
        assert_eq!(
            Arch::Vgg16.torchvision_indices(),
            [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
        );
    }

    #[test]
    fn spans() {
        let l = Arch::Vgg19.layers();
        let at = |name: &str| Span::of(&l, l.iter().position(|x| x.name == name).unwrap());
        let s = |stride, before, after| {
            Some(Span {
                stride,
                before,
                after,
            })
        };
        assert_eq!(at("conv1_1"), s(1, 1, 1));
        assert_eq!(at("relu1_2"), s(1, 2, 2));
        assert_eq!(at("pool1"), s(2, 2, 3));
        assert_eq!(at("relu2_1"), s(2, 4, 5));
        assert_eq!(at("relu4_2"), s(8, 38, 45));
        assert_eq!(at("relu5_1"), s(16, 70, 85));
        assert_eq!(at("relu5_1").unwrap().margin(), 70);
        assert_eq!(at("relu4_2").unwrap().margin(), 38);
        assert_eq!(Span::of(&l, l.len()), None);
    }
}
