//! Writing safetensors files deterministically: the one writer of whole weight files.

use std::collections::BTreeMap;

/// One F32 tensor to write: its name, shape and values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Serializes `(name, shape, values)` tensors (F32, written in the order given) and string
/// metadata to safetensors bytes, deterministically: the header's keys are sorted, so the
/// same tensors and metadata always give the same bytes.
///
/// ```
/// use std::collections::BTreeMap;
/// let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
/// let bytes = nst_vgg::safetensors_bytes(&meta, &[("t".into(), vec![2], vec![1.0, 2.0])]);
/// let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
/// assert_eq!(st.tensor("t").unwrap().shape(), &[2]);
/// ```
pub fn safetensors_bytes(metadata: &BTreeMap<String, String>, tensors: &[NamedTensor]) -> Vec<u8> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let meta = metadata
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect::<Vec<_>>()
        .join(",");
    entries.push(("__metadata__".into(), format!("{{{meta}}}")));
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let end = offset + data.len() * 4;
        let dims = shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        entries.push((
            name.clone(),
            format!("{{\"dtype\":\"F32\",\"shape\":[{dims}],\"data_offsets\":[{offset},{end}]}}"),
        ));
        offset = end;
    }
    entries.sort();
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
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, data) in tensors {
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
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
