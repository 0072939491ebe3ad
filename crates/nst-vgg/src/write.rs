//! Writing safetensors files deterministically: the one writer of the workspace (weights,
//! checkpoints, the CLI's feature and gradient files), streaming one tensor at a time.
//!
//! Why not the `safetensors` crate's `serialize`: it keeps the metadata in a `HashMap`, so the
//! `__metadata__` keys come out in a different order in each process (a weights file would
//! not hash the same twice, and the project promises the same bytes for the same inputs); and
//! it reorders tensors by dtype and name. This writer sorts every key of the header and lays
//! the data out in the order given. The crate still reads what it writes (tested).

use std::collections::BTreeMap;
use std::io::Write;

/// One F32 tensor to write: its name, shape and values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The element types the workspace writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// The little-endian bytes of a tensor, made only when the writer reaches it.
pub type Produce<'a, E> = Box<dyn FnOnce() -> Result<Vec<u8>, E> + 'a>;

/// A tensor to write: name, element type, shape, and the producer of its bytes (so a device
/// tensor is downloaded, or a large one converted, only when its turn comes).
pub struct Entry<'a, E> {
    /// The tensor's name in the file.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its bytes, little-endian, produced on demand.
    pub bytes: Produce<'a, E>,
}

impl<'a, E> Entry<'a, E> {
    /// An F32 tensor whose values are made on demand.
    pub fn f32(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: impl FnOnce() -> Result<Vec<f32>, E> + 'a,
    ) -> Self {
        Entry {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: Box::new(move || Ok(values()?.iter().flat_map(|v| v.to_le_bytes()).collect())),
        }
    }

    /// An F64 tensor of values already in memory.
    pub fn f64(name: impl Into<String>, values: &'a [f64]) -> Self {
        Entry {
            name: name.into(),
            dtype: Dtype::F64,
            shape: vec![values.len()],
            bytes: Box::new(move || Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())),
        }
    }

    fn len(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.size(), |n, &d| n.checked_mul(d))
    }
}

/// Writes a safetensors file to `w`: the header (every key sorted, padded to 8 bytes), then
/// each tensor's bytes in the order given, each produced only when it is written, so at most
/// one tensor's bytes are in memory. A producer's error ends the write with that error; a
/// producer that makes the wrong number of bytes, or a write that fails, is an I/O error.
///
/// ```
/// use nst_vgg::write::{write_safetensors, Entry};
/// use std::collections::BTreeMap;
/// let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
/// let mut out = Vec::new();
/// let rho = [0.5f64];
/// let entries = vec![
///     Entry::f32("t", vec![2], || Ok(vec![1.0, 2.0])),
///     Entry::f64("rho", &rho),
/// ];
/// write_safetensors::<std::io::Error>(&mut out, &meta, entries).unwrap();
/// let st = safetensors::SafeTensors::deserialize(&out).unwrap();
/// assert_eq!(st.tensor("t").unwrap().shape(), &[2]);
/// assert_eq!(st.tensor("rho").unwrap().dtype(), safetensors::Dtype::F64);
/// ```
pub fn write_safetensors<E: From<std::io::Error>>(
    w: &mut dyn Write,
    metadata: &BTreeMap<String, String>,
    tensors: Vec<Entry<'_, E>>,
) -> Result<(), E> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    let meta = metadata
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect::<Vec<_>>()
        .join(",");
    entries.insert("__metadata__".into(), format!("{{{meta}}}"));
    let mut offset = 0usize;
    let mut lens = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let len = t
            .len()
            .ok_or_else(|| invalid(format!("tensor {}: its size overflows", t.name)))?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| invalid("the file's size overflows".into()))?;
        let dims = t
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let info = format!(
            "{{\"dtype\":\"{}\",\"shape\":[{dims}],\"data_offsets\":[{offset},{end}]}}",
            t.dtype.name()
        );
        if entries.insert(t.name.clone(), info).is_some() {
            return Err(invalid(format!("two tensors are named {:?}", t.name)).into());
        }
        lens.push(len);
        offset = end;
    }
    let mut header = format!(
        "{{{}}}",
        entries
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_string(k)))
            .collect::<Vec<_>>()
            .join(",")
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    for (t, len) in tensors.into_iter().zip(lens) {
        let name = t.name;
        let bytes = (t.bytes)()?;
        if bytes.len() != len {
            return Err(invalid(format!(
                "tensor {name}: {} bytes made for a shape of {len}",
                bytes.len()
            ))
            .into());
        }
        w.write_all(&bytes)?;
    }
    Ok(())
}

/// Serializes `(name, shape, values)` F32 tensors (laid out in the order given) and string
/// metadata to safetensors bytes with [`write_safetensors`]: the same tensors and metadata
/// always give the same bytes.
///
/// ```
/// use std::collections::BTreeMap;
/// let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
/// let bytes = nst_vgg::safetensors_bytes(&meta, &[("t".into(), vec![2], vec![1.0, 2.0])]);
/// let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
/// assert_eq!(st.tensor("t").unwrap().shape(), &[2]);
/// ```
pub fn safetensors_bytes(metadata: &BTreeMap<String, String>, tensors: &[NamedTensor]) -> Vec<u8> {
    try_safetensors_bytes(metadata, tensors).expect("in-memory tensors of a consistent shape")
}

/// [`safetensors_bytes`], with an error (rather than a panic) when a tensor's values do not
/// fill its shape or two tensors share a name.
pub fn try_safetensors_bytes(
    metadata: &BTreeMap<String, String>,
    tensors: &[NamedTensor],
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(tensors.iter().map(|t| t.2.len() * 4).sum::<usize>() + 4096);
    let entries = tensors
        .iter()
        .map(|(n, s, d)| Entry::f32(n.clone(), s.clone(), || Ok(d.clone())))
        .collect();
    write_safetensors::<std::io::Error>(&mut out, metadata, entries)?;
    Ok(out)
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bytes_do_not_depend_on_the_metadatas_order_and_the_crate_reads_them() {
        let meta: BTreeMap<String, String> = (0..12)
            .map(|i| (format!("key{i}"), format!("v{i}")))
            .collect();
        let t = vec![
            ("b".to_string(), vec![1, 3], vec![1.0, 2.0, 3.0]),
            ("a".to_string(), vec![2], vec![4.0, 5.0]),
        ];
        let one = safetensors_bytes(&meta, &t);
        let reversed: BTreeMap<String, String> = meta
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(one, safetensors_bytes(&reversed, &t));
        let st = safetensors::SafeTensors::deserialize(&one).unwrap();
        let a = st.tensor("a").unwrap();
        assert_eq!(a.data(), &[4.0f32, 5.0].map(f32::to_le_bytes).concat()[..]);
        // Laid out in the order given: "b" first, though the header lists "a" first.
        let b = st.tensor("b").unwrap();
        assert_eq!(b.shape(), &[1, 3]);
        let (_, m) = safetensors::SafeTensors::read_metadata(&one).unwrap();
        let offsets = m.info("b").unwrap().data_offsets;
        assert_eq!(offsets, (0, 12));
        assert_eq!(m.metadata().as_ref().unwrap().len(), 12);
    }

    #[test]
    fn the_crates_own_writer_would_not_be_deterministic() {
        // What this writer exists for: the crate's metadata is a HashMap, so two maps with the
        // same twelve keys (each its own random hash seed) serialise in different orders.
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
        let headers: std::collections::BTreeSet<Vec<u8>> = (0..8)
            .map(|_| {
                let meta: std::collections::HashMap<String, String> = (0..12)
                    .map(|i| (format!("key{i}"), format!("v{i}")))
                    .collect();
                safetensors::serialize(views.clone(), Some(meta)).unwrap()
            })
            .collect();
        assert!(headers.len() > 1, "the crate's metadata order was stable");
    }

    #[test]
    fn a_producer_that_makes_the_wrong_size_or_a_repeated_name_is_an_error() {
        let meta = BTreeMap::new();
        let mut out = Vec::new();
        let short = vec![Entry::f32("t", vec![3], || Ok(vec![1.0]))];
        let e = write_safetensors::<std::io::Error>(&mut out, &meta, short).unwrap_err();
        assert!(
            e.to_string().contains("4 bytes made for a shape of 12"),
            "{e}"
        );
        let twice = [
            ("t".to_string(), vec![1], vec![1.0]),
            ("t".to_string(), vec![1], vec![2.0]),
        ];
        let e = try_safetensors_bytes(&meta, &twice).unwrap_err();
        assert!(e.to_string().contains("two tensors are named"), "{e}");
        // A producer's own error ends the write with it, after the header.
        let failing: Vec<Entry<'_, std::io::Error>> = vec![Entry::f32("t", vec![1], || {
            Err(std::io::Error::other("download failed"))
        })];
        let mut out = Vec::new();
        let e = write_safetensors(&mut out, &meta, failing).unwrap_err();
        assert_eq!(e.to_string(), "download failed");
    }
}
