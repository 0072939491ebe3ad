//! Reading `torch.save` files, legacy (non-zip) and zip format, into named host tensors.

use crate::pickle::{self, DType, TensorRef, Value};
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::{Cursor, Read};

/// The data of a host tensor read from a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Bytes (quantization indices).
    U8(Vec<u8>),
    /// Floats (any float storage, converted to f32).
    F32(Vec<f32>),
}

/// A named tensor read from a checkpoint, made contiguous.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Data,
}

/// The magic number that opens a legacy `torch.save` file.
const LEGACY_MAGIC: i64 = 0x1950a86a20f9469cfc6c_i128 as i64;

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: renormalise.
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Gathers a strided view of raw little-endian storage bytes into a contiguous tensor.
fn materialize(t: &TensorRef, raw: &[u8], name: &str) -> Result<HostTensor> {
    let es = t.storage.dtype.size();
    let bad = |msg: &str| Error::Format(format!("{name}: {msg}"));
    let need = t
        .storage
        .numel
        .checked_mul(es)
        .ok_or_else(|| bad("the storage size overflows"))?;
    if raw.len() < need {
        return Err(Error::Format(format!(
            "{name}: storage {} holds {} bytes, expected {need}",
            t.storage.key,
            raw.len(),
        )));
    }
    if t.size.len() != t.stride.len() {
        return Err(bad("size and stride differ in rank"));
    }
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("the tensor size overflows"))?;
    // The view's last element, checked before anything is allocated for it: the view must
    // lie inside its storage, and hold no more elements than the storage (a state dict's
    // tensors are never broadcast views).
    if numel > 0 {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            })
            .ok_or_else(|| bad("view exceeds its storage"))?;
        if last >= t.storage.numel {
            return Err(bad("view exceeds its storage"));
        }
        if numel > t.storage.numel {
            return Err(bad("view has more elements than its storage"));
        }
    }
    // Flat storage index of every element in row-major order (all inside the storage).
    let mut idx = Vec::with_capacity(numel);
    if numel > 0 {
        let mut counter = vec![0usize; t.size.len()];
        for _ in 0..numel {
            let off = t.offset
                + counter
                    .iter()
                    .zip(&t.stride)
                    .map(|(c, s)| c * s)
                    .sum::<usize>();
            idx.push(off);
            for d in (0..counter.len()).rev() {
                counter[d] += 1;
                if counter[d] < t.size[d] {
                    break;
                }
                counter[d] = 0;
            }
        }
    }
    let at = |i: usize| &raw[i * es..(i + 1) * es];
    let data = match t.storage.dtype {
        DType::U8 => Data::U8(idx.iter().map(|&i| raw[i]).collect()),
        DType::F32 => Data::F32(
            idx.iter()
                .map(|&i| f32::from_le_bytes(at(i).try_into().expect("4 bytes")))
                .collect(),
        ),
        DType::F64 => Data::F32(
            idx.iter()
                .map(|&i| f64::from_le_bytes(at(i).try_into().expect("8 bytes")) as f32)
                .collect(),
        ),
        DType::F16 => Data::F32(
            idx.iter()
                .map(|&i| f16_to_f32(u16::from_le_bytes(at(i).try_into().expect("2 bytes"))))
                .collect(),
        ),
        DType::I64 => {
            return Err(Error::Format(format!(
                "{name}: integer tensors are not weights"
            )))
        }
    };
    Ok(HostTensor {
        shape: t.size.clone(),
        data,
    })
}

/// The `name -> tensor` entries of the main pickle (a dict, possibly nested under
/// `state_dict`).
fn tensor_entries(v: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(items) = v else {
        return Err(Error::Format(
            "the checkpoint is not a dict of tensors".into(),
        ));
    };
    let mut out = Vec::new();
    for (k, v) in items {
        match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => out.push((k, t)),
            (Value::Str(k), inner @ Value::Dict(_)) if k == "state_dict" => {
                return tensor_entries(inner)
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Whether `bytes` look like a legacy `torch.save` file.
pub fn is_legacy(bytes: &[u8]) -> bool {
    let mut pos = 0;
    matches!(pickle::load(bytes, &mut pos), Ok(Value::Int(m)) if m == LEGACY_MAGIC)
}

/// Reads a legacy (non-zip) `torch.save` file.
pub fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, HostTensor)>> {
    let mut pos = 0;
    match pickle::load(bytes, &mut pos)? {
        Value::Int(m) if m == LEGACY_MAGIC => {}
        _ => {
            return Err(Error::Format(
                "not a legacy torch.save file (bad magic)".into(),
            ))
        }
    }
    pickle::load(bytes, &mut pos)?; // protocol version
    let sys = pickle::load(bytes, &mut pos)?;
    if let Value::Dict(items) = &sys {
        let le = items
            .iter()
            .find(|(k, _)| *k == Value::Str("little_endian".into()));
        if let Some((_, Value::Bool(false))) = le {
            return Err(Error::Format(
                "big-endian checkpoints are not supported".into(),
            ));
        }
    }
    let entries = tensor_entries(pickle::load(bytes, &mut pos)?)?;
    let Value::List(keys) = pickle::load(bytes, &mut pos)? else {
        return Err(Error::Format("missing storage key list".into()));
    };
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    let dtypes: HashMap<&str, DType> = entries
        .iter()
        .map(|(_, t)| (t.storage.key.as_str(), t.storage.dtype))
        .collect();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(Error::Format("storage key is not a string".into()));
        };
        let count = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| Error::Format(format!("storage {key}: truncated")))?;
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes")) as usize;
        pos += 8;
        let es = dtypes.get(key.as_str()).map_or(4, |d| d.size());
        let len = count
            .checked_mul(es)
            .filter(|&l| pos.checked_add(l).is_some_and(|end| end <= bytes.len()))
            .ok_or_else(|| Error::Format(format!("storage {key}: truncated")))?;
        storages.insert(key, &bytes[pos..pos + len]);
        pos += len;
    }
    entries
        .into_iter()
        .map(|(name, t)| {
            let raw = storages.get(&t.storage.key).ok_or_else(|| {
                Error::Format(format!("{name}: storage {} missing", t.storage.key))
            })?;
            Ok((name.clone(), materialize(&t, raw, &name)?))
        })
        .collect()
}

/// Reads a zip-format `torch.save` file (`<name>/data.pkl` plus `<name>/data/<key>`).
pub fn read_zip(bytes: &[u8]) -> Result<Vec<(String, HostTensor)>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Error::Format(format!("not a zip archive: {e}")))?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| Error::Format("zip archive without data.pkl".into()))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let read = |zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str| -> Result<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| Error::Format(format!("{name}: {e}")))?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)
            .map_err(|e| Error::Format(format!("{name}: {e}")))?;
        Ok(v)
    };
    let main = read(&mut zip, &pkl)?;
    let entries = tensor_entries(pickle::load(&main, &mut 0)?)?;
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        if !cache.contains_key(&t.storage.key) {
            let raw = read(&mut zip, &format!("{prefix}data/{}", t.storage.key))?;
            cache.insert(t.storage.key.clone(), raw);
        }
        let t_out = materialize(&t, &cache[&t.storage.key], &name)?;
        out.push((name, t_out));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn half_floats() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }
}
