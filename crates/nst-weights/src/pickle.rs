//! A small, safe reader for the subset of Python's pickle format that `torch.save` writes.
//!
//! It understands only the opcodes and the few globals that checkpoint files use, builds
//! plain values, and refuses everything else: it never imports or executes anything.

use crate::{Error, Result};

/// A value built by the reader.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict (insertion order kept).
    Dict(Vec<(Value, Value)>),
    /// One of the allowed globals, by module and name (not callable by itself).
    Global(String, String),
    /// A reference to a tensor storage (`BINPERSID` of a `('storage', …)` tuple).
    Storage(StorageRef),
    /// A tensor view of a storage (`torch._utils._rebuild_tensor_v2`).
    Tensor(TensorRef),
}

/// The element type of a storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// `torch.ByteStorage`: u8.
    U8,
    /// `torch.FloatStorage`: f32.
    F32,
    /// `torch.DoubleStorage`: f64.
    F64,
    /// `torch.HalfStorage`: f16.
    F16,
    /// `torch.LongStorage`: i64.
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 => 2,
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    fn from_storage_name(name: &str) -> Option<Self> {
        Some(match name {
            "ByteStorage" => DType::U8,
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "LongStorage" => DType::I64,
            _ => return None,
        })
    }
}

/// A storage reference: element type, key of its raw data, and element count.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// Element type.
    pub dtype: DType,
    /// The key under which the raw data is stored.
    pub key: String,
    /// Number of elements.
    pub numel: usize,
}

/// A tensor: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage viewed.
    pub storage: StorageRef,
    /// Offset in elements.
    pub offset: usize,
    /// Dimensions.
    pub size: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// The globals a checkpoint may name; anything else is refused.
const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch", "ByteStorage"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "LongStorage"),
    ("collections", "OrderedDict"),
];

enum Item {
    Mark,
    V(Value),
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| Error::Pickle(format!("truncated at byte {}", self.pos)))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.bytes(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| Error::Pickle("unterminated GLOBAL".into()))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}

fn as_usize(v: &Value, what: &str) -> Result<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(Error::Pickle(format!(
            "{what}: expected a non-negative int, got {other:?}"
        ))),
    }
}

fn as_usizes(v: &Value, what: &str) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            items.iter().map(|i| as_usize(i, what)).collect()
        }
        other => Err(Error::Pickle(format!(
            "{what}: expected a tuple, got {other:?}"
        ))),
    }
}

fn persistent_load(pid: Value) -> Result<Value> {
    let Value::Tuple(items) = pid else {
        return Err(Error::Pickle(format!("unsupported persistent id {pid:?}")));
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(module, name), Value::Str(key), _location, numel, ..]
            if tag == "storage" && module == "torch" =>
        {
            let dtype = DType::from_storage_name(name)
                .ok_or_else(|| Error::Pickle(format!("unsupported storage type torch.{name}")))?;
            Ok(Value::Storage(StorageRef {
                dtype,
                key: key.clone(),
                numel: as_usize(numel, "storage size")?,
            }))
        }
        _ => Err(Error::Pickle(format!(
            "unsupported persistent id {items:?}"
        ))),
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = &callable else {
        return Err(Error::Pickle(format!("cannot call {callable:?}")));
    };
    let Value::Tuple(args) = args else {
        return Err(Error::Pickle(format!(
            "arguments of {module}.{name} are not a tuple"
        )));
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") if args.is_empty() => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") if args.len() >= 4 => {
            let Value::Storage(storage) = &args[0] else {
                return Err(Error::Pickle("tensor without a storage".into()));
            };
            Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: as_usize(&args[1], "tensor offset")?,
                size: as_usizes(&args[2], "tensor size")?,
                stride: as_usizes(&args[3], "tensor stride")?,
            }))
        }
        _ => Err(Error::Pickle(format!("refusing to call {module}.{name}"))),
    }
}

/// Reads one pickle from `data` starting at `*pos`; leaves `*pos` just past its STOP.
pub fn load(data: &[u8], pos: &mut usize) -> Result<Value> {
    let mut r = Reader { data, pos: *pos };
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: std::collections::HashMap<u32, Value> = Default::default();

    fn pop(stack: &mut Vec<Item>) -> Result<Value> {
        match stack.pop() {
            Some(Item::V(v)) => Ok(v),
            Some(Item::Mark) => Err(Error::Pickle("unexpected MARK".into())),
            None => Err(Error::Pickle("stack underflow".into())),
        }
    }
    fn pop_mark(stack: &mut Vec<Item>) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            match stack.pop() {
                Some(Item::Mark) => break,
                Some(Item::V(v)) => out.push(v),
                None => return Err(Error::Pickle("MARK not found".into())),
            }
        }
        out.reverse();
        Ok(out)
    }
    fn top(stack: &mut [Item]) -> Result<&mut Value> {
        match stack.last_mut() {
            Some(Item::V(v)) => Ok(v),
            _ => Err(Error::Pickle("expected a value on the stack".into())),
        }
    }
    fn set_items(target: &mut Value, items: Vec<Value>) -> Result<()> {
        let Value::Dict(d) = target else {
            return Err(Error::Pickle("SETITEMS on a non-dict".into()));
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }
    fn append(target: &mut Value, items: Vec<Value>) -> Result<()> {
        let Value::List(l) = target else {
            return Err(Error::Pickle("APPEND on a non-list".into()));
        };
        l.extend(items);
        Ok(())
    }

    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.bytes(8)?; // FRAME
            }
            b'.' => {
                *pos = r.pos;
                return pop(&mut stack);
            }
            b'(' => stack.push(Item::Mark),
            b'N' => stack.push(Item::V(Value::None)),
            0x88 => stack.push(Item::V(Value::Bool(true))),
            0x89 => stack.push(Item::V(Value::Bool(false))),
            b'J' => stack.push(Item::V(Value::Int(r.u32()? as i32 as i64))),
            b'K' => stack.push(Item::V(Value::Int(r.u8()? as i64))),
            b'M' => stack.push(Item::V(Value::Int(r.u16()? as i64))),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = r.u8()? as usize;
                let b = r.bytes(n)?;
                if n > 8 {
                    // Only the torch magic number is this long; keep its low bits.
                    stack.push(Item::V(Value::Int(i64::from_le_bytes(
                        b[..8].try_into().expect("8 bytes"),
                    ))));
                } else {
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    stack.push(Item::V(Value::Int(i64::from_le_bytes(buf))));
                }
            }
            b'G' => {
                let b = r.bytes(8)?;
                stack.push(Item::V(Value::Float(f64::from_be_bytes(
                    b.try_into().expect("8 bytes"),
                ))));
            }
            b'X' => {
                let n = r.u32()? as usize;
                let s = String::from_utf8(r.bytes(n)?.to_vec())
                    .map_err(|_| Error::Pickle("invalid UTF-8 string".into()))?;
                stack.push(Item::V(Value::Str(s)));
            }
            0x8c => {
                let n = r.u8()? as usize;
                let s = String::from_utf8(r.bytes(n)?.to_vec())
                    .map_err(|_| Error::Pickle("invalid UTF-8 string".into()))?;
                stack.push(Item::V(Value::Str(s)));
            }
            b')' => stack.push(Item::V(Value::Tuple(Vec::new()))),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Item::V(Value::Tuple(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(pop(&mut stack)?);
                }
                items.reverse();
                stack.push(Item::V(Value::Tuple(items)));
            }
            b'}' => stack.push(Item::V(Value::Dict(Vec::new()))),
            b']' => stack.push(Item::V(Value::List(Vec::new()))),
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                set_items(top(&mut stack)?, vec![k, v])?;
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                set_items(top(&mut stack)?, items)?;
            }
            b'a' => {
                let v = pop(&mut stack)?;
                append(top(&mut stack)?, vec![v])?;
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                append(top(&mut stack)?, items)?;
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                if !ALLOWED_GLOBALS.contains(&(module.as_str(), name.as_str())) {
                    return Err(Error::Pickle(format!("refusing global {module}.{name}")));
                }
                stack.push(Item::V(Value::Global(module, name)));
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(Item::V(persistent_load(pid)?));
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push(Item::V(reduce(callable, args)?));
            }
            b'b' => {
                // BUILD: only the attribute dict of an OrderedDict (`_metadata`) is expected;
                // it carries nothing we need, so it is dropped.
                pop(&mut stack)?;
                if !matches!(top(&mut stack)?, Value::Dict(_)) {
                    return Err(Error::Pickle("BUILD on something other than a dict".into()));
                }
            }
            b'q' => {
                let k = r.u8()? as u32;
                memo.insert(k, top(&mut stack)?.clone());
            }
            b'r' => {
                let k = r.u32()?;
                memo.insert(k, top(&mut stack)?.clone());
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, top(&mut stack)?.clone());
            }
            b'h' | b'j' => {
                let k = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                let v = memo
                    .get(&k)
                    .ok_or_else(|| Error::Pickle(format!("memo key {k} not found")))?;
                stack.push(Item::V(v.clone()));
            }
            other => {
                return Err(Error::Pickle(format!(
                    "unsupported opcode 0x{other:02x} at byte {at}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_globals() {
        let data = b"\x80\x02cos\nsystem\nq\x00.";
        let err = load(data, &mut 0).unwrap_err().to_string();
        assert!(err.contains("refusing global os.system"), "{err}");
    }

    #[test]
    fn refuses_unknown_opcodes_and_truncation() {
        assert!(load(b"\x80\x02I12\n.", &mut 0).is_err());
        assert!(load(b"\x80\x02X\x05\x00\x00\x00ab", &mut 0).is_err());
    }

    #[test]
    fn reads_dicts_lists_and_memo() {
        // {'a': [1, 300, -2], 'b': ('x', None, True)} with memo reuse of 'x'.
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01](K\x01M,\x01J\xfe\xff\xff\xffeX\x01\x00\x00\x00b\x8c\x01xq\x02N\x88\x87u.";
        let mut pos = 0;
        let v = load(data, &mut pos).unwrap();
        assert_eq!(pos, data.len());
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::List(vec![Value::Int(1), Value::Int(300), Value::Int(-2)])
                ),
                (
                    Value::Str("b".into()),
                    Value::Tuple(vec![Value::Str("x".into()), Value::None, Value::Bool(true)])
                ),
            ])
        );
    }
}
