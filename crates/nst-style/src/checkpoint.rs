//! [`Checkpoint`]: everything a render needs to continue where it stopped, as one safetensors
//! file (the tensors, plus the counters and the fingerprint of the inputs and settings in its
//! metadata).
//!
//! The render's only random draw is the initial noise, made from the seed when the first
//! scale starts; the seed is part of the fingerprint, so the seed is the whole RNG state a
//! checkpoint needs (the noise is not drawn again on resume: the image is restored).
//!
//! The reader trusts nothing in the file: every count, shape and number is checked against
//! the others before anything is allocated from it, and anything inconsistent is an
//! [`Error::Checkpoint`].

use crate::{Error, Result};
use nst_optim::{AdamState, LbfgsState};
use nst_vgg::write::Entry as Out;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

/// The format name written into every checkpoint.
const FORMAT: &str = "nst-checkpoint";
/// The version of the layout below.
const VERSION: &str = "1";
/// The most correction pairs a checkpoint may hold (far beyond any useful history).
const MAX_PAIRS: usize = 100_000;

/// The optimizer's saved state, on the host.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerState {
    /// L-BFGS (with or without a line search).
    Lbfgs(LbfgsState<Vec<f32>>),
    /// Adam.
    Adam(AdamState<Vec<f32>>),
    /// Gradient descent keeps no state.
    Stateless,
}

/// The state of a render between two iterations.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The scale the render is in (0-based).
    pub scale: usize,
    /// Iterations completed in that scale (equal to its iteration count at a scale's end).
    pub iteration: usize,
    /// Width and height of the scale.
    pub size: (usize, usize),
    /// The image in model space (`3 x h x w`).
    pub image: Vec<f32>,
    /// The image before the last iteration, the last one known to have a finite loss (`None`
    /// at a scale's start).
    pub previous: Option<Vec<f32>>,
    /// The image the objective's image-following targets (the nearest-neighbour loss's) were
    /// last made for (`None` when no term follows the image).
    pub refreshed: Option<Vec<f32>>,
    /// The optimizer's state (`Stateless` at a scale's end: the next scale starts afresh).
    pub optimizer: OptimizerState,
    /// Render time spent before this checkpoint.
    pub elapsed: Duration,
    /// The current scale's last losses, oldest first, as many as the convergence test
    /// (`RenderConfig::tolerance`) looks back over (empty when it is off).
    pub recent_losses: Vec<f64>,
    /// What the render was made from: `(name, value)` pairs of digests of the inputs and of
    /// the settings; a resume with a different fingerprint is refused.
    pub fingerprint: Vec<(String, String)>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Checkpoint(msg.into())
}

/// What a checkpoint's metadata says besides the fingerprint.
pub(crate) struct Head<'a> {
    pub(crate) scale: usize,
    pub(crate) iteration: usize,
    pub(crate) size: (usize, usize),
    pub(crate) elapsed: Duration,
    pub(crate) recent_losses: &'a [f64],
    pub(crate) fingerprint: &'a [(String, String)],
    pub(crate) optimizer: HeadOptimizer,
}

/// The optimizer's scalars.
pub(crate) enum HeadOptimizer {
    Stateless,
    Lbfgs {
        rho: Vec<f64>,
        h_diag: f64,
        last: bool,
    },
    Adam {
        steps: u32,
    },
}

/// An image-shaped tensor to write, produced when its turn comes (so a device tensor is
/// downloaded one at a time, never all at once).
pub(crate) type Source<'s> = (String, Box<dyn Fn() -> Result<Vec<f32>> + 's>);

/// Why writing a checkpoint failed: the output, or a tensor's source (a download).
enum WriteError {
    Io(std::io::Error),
    Source(Error),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

/// Writes a checkpoint as a safetensors file with the workspace's one writer
/// ([`nst_vgg::write_safetensors`]): the header (every tensor's shape and offsets, the
/// metadata), then each tensor's bytes as its source produces them.
pub(crate) fn write(w: &mut dyn Write, head: &Head<'_>, images: &[Source<'_>]) -> Result<()> {
    let (width, height) = head.size;
    let mut meta: BTreeMap<String, String> = BTreeMap::from([
        ("format".into(), FORMAT.into()),
        ("version".into(), VERSION.into()),
        ("scale".into(), head.scale.to_string()),
        ("iteration".into(), head.iteration.to_string()),
        ("width".into(), width.to_string()),
        ("height".into(), height.to_string()),
        ("elapsed_ns".into(), head.elapsed.as_nanos().to_string()),
    ]);
    if !head.recent_losses.is_empty() {
        // Bit patterns, so that a resumed convergence test sees exactly the same numbers.
        let bits: Vec<String> = head
            .recent_losses
            .iter()
            .map(|l| format!("{:016x}", l.to_bits()))
            .collect();
        meta.insert("recent_losses".into(), bits.join(","));
    }
    let mut entries: Vec<Out<'_, WriteError>> = Vec::new();
    match &head.optimizer {
        HeadOptimizer::Stateless => {
            meta.insert("optimizer".into(), "none".into());
        }
        HeadOptimizer::Lbfgs { rho, h_diag, last } => {
            meta.insert("optimizer".into(), "lbfgs".into());
            meta.insert("lbfgs.pairs".into(), rho.len().to_string());
            meta.insert("lbfgs.h_diag".into(), format!("{:016x}", h_diag.to_bits()));
            meta.insert("lbfgs.last".into(), last.to_string());
            if !rho.is_empty() {
                entries.push(Out::f64("lbfgs.rho", rho));
            }
        }
        HeadOptimizer::Adam { steps } => {
            meta.insert("optimizer".into(), "adam".into());
            meta.insert("adam.steps".into(), steps.to_string());
        }
    }
    for (k, v) in head.fingerprint {
        meta.insert(format!("fp.{k}"), v.clone());
    }
    for (name, source) in images {
        entries.push(Out::f32(
            name.clone(),
            vec![1, 3, height, width],
            move || source().map_err(WriteError::Source),
        ));
    }
    nst_vgg::write_safetensors(w, &meta, entries).map_err(|e| match e {
        WriteError::Io(e) => bad(format!("cannot write the checkpoint: {e}")),
        WriteError::Source(e) => e,
    })
}

impl Checkpoint {
    /// The names of the image-shaped tensors and the optimizer's scalars of a state.
    fn parts(&self) -> (Vec<(String, &[f32])>, HeadOptimizer) {
        let mut v: Vec<(String, &[f32])> = vec![("image".into(), &self.image)];
        if let Some(p) = &self.previous {
            v.push(("previous".into(), p));
        }
        if let Some(r) = &self.refreshed {
            v.push(("refreshed".into(), r));
        }
        let head = match &self.optimizer {
            OptimizerState::Stateless => HeadOptimizer::Stateless,
            OptimizerState::Lbfgs(s) => {
                for (i, (sv, yv, _)) in s.pairs.iter().enumerate() {
                    v.push((format!("lbfgs.s.{i}"), sv));
                    v.push((format!("lbfgs.y.{i}"), yv));
                }
                if let Some((ls, lg)) = &s.last {
                    v.push(("lbfgs.last_s".into(), ls));
                    v.push(("lbfgs.last_g".into(), lg));
                }
                HeadOptimizer::Lbfgs {
                    rho: s.pairs.iter().map(|p| p.2).collect(),
                    h_diag: s.h_diag,
                    last: s.last.is_some(),
                }
            }
            OptimizerState::Adam(s) => {
                if let Some((m, mv)) = &s.moments {
                    v.push(("adam.m".into(), m));
                    v.push(("adam.v".into(), mv));
                }
                HeadOptimizer::Adam { steps: s.steps }
            }
        };
        (v, head)
    }

    /// Writes the checkpoint as a safetensors file.
    pub fn write_to(&self, w: &mut dyn Write) -> Result<()> {
        let (parts, optimizer) = self.parts();
        let head = Head {
            scale: self.scale,
            iteration: self.iteration,
            size: self.size,
            elapsed: self.elapsed,
            recent_losses: &self.recent_losses,
            fingerprint: &self.fingerprint,
            optimizer,
        };
        let sources: Vec<Source<'_>> = parts
            .into_iter()
            .map(|(n, d)| -> Source<'_> { (n, Box::new(move || Ok(d.to_vec()))) })
            .collect();
        write(w, &head, &sources)
    }

    /// The checkpoint as the bytes of a safetensors file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Reads a checkpoint written by [`Checkpoint::to_bytes`], checking everything.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        Checkpoint::read_from(std::io::Cursor::new(bytes))
    }

    /// Reads a checkpoint from a file or any seekable reader, tensor by tensor: the header
    /// first (checked), then each tensor's bytes straight into its vector, so reading a
    /// checkpoint of N bytes holds N bytes of vectors and one small buffer, never the file's
    /// bytes beside them.
    pub fn read_from<R: Read + Seek>(reader: R) -> Result<Checkpoint> {
        let mut st = Reader::open(reader)?;
        let meta = Meta(st.metadata.clone());
        if meta.get("format")? != FORMAT {
            return Err(bad("not an nst checkpoint"));
        }
        if meta.get("version")? != VERSION {
            return Err(bad(format!(
                "checkpoint version {} (this build reads version {VERSION})",
                meta.get("version")?
            )));
        }
        let (w, h) = (meta.num("width")?, meta.num("height")?);
        let len = w
            .checked_mul(h)
            .and_then(|p| p.checked_mul(3))
            .filter(|&n| n > 0)
            .ok_or_else(|| bad(format!("bad image size {w}x{h}")))?;
        let mut images = Images {
            st: &mut st,
            shape: [1, 3, h, w],
            len,
        };
        let image = images.need("image")?;
        let previous = images.read("previous")?;
        let refreshed = images.read("refreshed")?;
        let recent_losses = match meta.0.get("recent_losses") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(|b| u64::from_str_radix(b, 16).map(f64::from_bits))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad("the checkpoint's recent_losses are not numbers"))?,
        };
        let optimizer = read_optimizer(&mut images, &meta)?;
        let elapsed_ns: u64 = meta
            .get("elapsed_ns")?
            .parse()
            .map_err(|_| bad("the checkpoint's elapsed_ns is not a count"))?;
        let mut fingerprint: Vec<(String, String)> = meta
            .0
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("fp.").map(|k| (k.to_string(), v.clone())))
            .collect();
        fingerprint.sort();
        Ok(Checkpoint {
            scale: meta.num("scale")?,
            iteration: meta.num("iteration")?,
            size: (w, h),
            image,
            previous,
            refreshed,
            optimizer,
            elapsed: Duration::from_nanos(elapsed_ns),
            recent_losses,
            fingerprint,
        })
    }

    /// The names (and values, checkpoint first) of the fingerprint entries that differ from
    /// `current`: empty when the checkpoint belongs to this render.
    pub fn differences(&self, current: &[(String, String)]) -> Vec<String> {
        let theirs: HashMap<&str, &str> = self
            .fingerprint
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let ours: HashMap<&str, &str> = current
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut keys: Vec<&str> = theirs.keys().chain(ours.keys()).copied().collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .filter(|k| theirs.get(k) != ours.get(k))
            .map(|k| {
                format!(
                    "{k} ({} in the checkpoint, {} now)",
                    theirs.get(k).copied().unwrap_or("absent"),
                    ours.get(k).copied().unwrap_or("absent")
                )
            })
            .collect()
    }
}

/// A checkpoint's metadata, with errors that name what is missing or malformed.
struct Meta(HashMap<String, String>);

impl Meta {
    fn get(&self, k: &str) -> Result<&str> {
        self.0
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| bad(format!("the checkpoint has no {k}")))
    }

    fn num(&self, k: &str) -> Result<usize> {
        self.get(k)?
            .parse::<usize>()
            .map_err(|_| bad(format!("the checkpoint's {k} is not a count")))
    }
}

/// The image-shaped tensors of a checkpoint being read.
struct Images<'a, R> {
    st: &'a mut Reader<R>,
    shape: [usize; 4],
    len: usize,
}

impl<R: Read + Seek> Images<'_, R> {
    fn read(&mut self, name: &str) -> Result<Option<Vec<f32>>> {
        self.st.f32s(name, &self.shape, self.len)
    }

    fn need(&mut self, name: &str) -> Result<Vec<f32>> {
        self.read(name)?
            .ok_or_else(|| bad(format!("the checkpoint has no tensor {name}")))
    }
}

/// The optimizer's state a checkpoint holds (its scalars in the metadata, its vectors as
/// image-shaped tensors).
fn read_optimizer<R: Read + Seek>(
    images: &mut Images<'_, R>,
    meta: &Meta,
) -> Result<OptimizerState> {
    Ok(match meta.get("optimizer")? {
        "none" => OptimizerState::Stateless,
        "lbfgs" => {
            let n = meta.num("lbfgs.pairs")?;
            if n > MAX_PAIRS {
                return Err(bad(format!("{n} correction pairs")));
            }
            let bits = u64::from_str_radix(meta.get("lbfgs.h_diag")?, 16)
                .map_err(|_| bad("the checkpoint's lbfgs.h_diag is not a number"))?;
            let rho: Vec<f64> = if n == 0 {
                Vec::new()
            } else {
                images.st.f64s("lbfgs.rho", n)?
            };
            let pairs = (0..n)
                .map(|i| {
                    Ok((
                        images.need(&format!("lbfgs.s.{i}"))?,
                        images.need(&format!("lbfgs.y.{i}"))?,
                        rho[i],
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            let last = match meta.get("lbfgs.last")? {
                "true" => Some((images.need("lbfgs.last_s")?, images.need("lbfgs.last_g")?)),
                "false" => None,
                _ => return Err(bad("the checkpoint's lbfgs.last is not true or false")),
            };
            OptimizerState::Lbfgs(LbfgsState {
                pairs,
                last,
                h_diag: f64::from_bits(bits),
            })
        }
        "adam" => {
            let steps = u32::try_from(meta.num("adam.steps")?)
                .map_err(|_| bad("the checkpoint's adam.steps is too large"))?;
            let moments = match (images.read("adam.m")?, images.read("adam.v")?) {
                (Some(m), Some(v)) => Some((m, v)),
                (None, None) => None,
                _ => return Err(bad("the checkpoint has one of Adam's moments only")),
            };
            OptimizerState::Adam(AdamState { moments, steps })
        }
        other => return Err(bad(format!("unknown optimizer {other:?}"))),
    })
}

/// A safetensors file read tensor by tensor: its header parsed and checked (the tensors
/// cover the data section exactly, in order, each as long as its dtype and shape say), each
/// tensor's bytes read only when asked for.
struct Reader<R> {
    r: R,
    /// Where the data section starts in the file.
    data_start: u64,
    metadata: HashMap<String, String>,
    tensors: HashMap<String, Entry>,
}

struct Entry {
    dtype: String,
    shape: Vec<usize>,
    /// Offsets in the data section.
    start: u64,
    end: u64,
}

/// The longest header a checkpoint may have (its fingerprint and names, far below this).
const MAX_HEADER: u64 = 100 << 20;

impl<R: Read + Seek> Reader<R> {
    fn open(mut r: R) -> Result<Self> {
        let not = |why: String| bad(format!("not a checkpoint ({why})"));
        let io = |e: std::io::Error| not(e.to_string());
        let file_len = r.seek(SeekFrom::End(0)).map_err(io)?;
        r.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut n8 = [0u8; 8];
        r.read_exact(&mut n8)
            .map_err(|_| not("shorter than a header".into()))?;
        let n = u64::from_le_bytes(n8);
        if n > MAX_HEADER || n > file_len - 8 {
            return Err(not(format!("a header of {n} bytes")));
        }
        let mut header = vec![0u8; n as usize];
        r.read_exact(&mut header).map_err(io)?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| not(format!("its header: {e}")))?;
        let mut metadata = HashMap::new();
        let mut tensors = HashMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                let m = v.as_object().ok_or_else(|| not("bad metadata".into()))?;
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| not(format!("metadata {k} is not text")))?;
                    metadata.insert(k.clone(), v.to_string());
                }
                continue;
            }
            let bad_entry = || not(format!("tensor {name:?} is badly described"));
            let dtype = v["dtype"].as_str().ok_or_else(bad_entry)?.to_string();
            let shape = v["shape"]
                .as_array()
                .ok_or_else(bad_entry)?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(bad_entry)?;
            let (start, end) = match v["data_offsets"].as_array().map(Vec::as_slice) {
                Some([a, b]) => (
                    a.as_u64().ok_or_else(bad_entry)?,
                    b.as_u64().ok_or_else(bad_entry)?,
                ),
                _ => return Err(bad_entry()),
            };
            let size: u64 = match dtype.as_str() {
                "F32" => 4,
                "F64" => 8,
                _ => return Err(not(format!("tensor {name:?} has dtype {dtype}"))),
            };
            let want = shape
                .iter()
                .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
                .ok_or_else(bad_entry)?;
            if end < start || end - start != want {
                return Err(bad_entry());
            }
            tensors.insert(
                name,
                Entry {
                    dtype,
                    shape,
                    start,
                    end,
                },
            );
        }
        // The tensors tile the data section, which ends the file.
        let mut spans: Vec<(u64, u64)> = tensors.values().map(|e| (e.start, e.end)).collect();
        spans.sort_unstable();
        let mut at = 0;
        for (a, b) in spans {
            if a != at {
                return Err(not("its tensors overlap or leave gaps".into()));
            }
            at = b;
        }
        let data_start = 8 + n;
        if data_start.checked_add(at) != Some(file_len) {
            return Err(not("its length is not the header's".into()));
        }
        Ok(Reader {
            r,
            data_start,
            metadata,
            tensors,
        })
    }

    /// The bytes of tensor `name`, passed in pieces of at most 64 KiB (each a multiple of
    /// `unit` bytes) to `take`, the tensor's description checked by `check` first; `None`
    /// when there is no such tensor.
    fn stream(
        &mut self,
        name: &str,
        unit: usize,
        check: impl FnOnce(&Entry) -> Result<()>,
        mut take: impl FnMut(&[u8]),
    ) -> Result<Option<()>> {
        let Some(e) = self.tensors.get(name) else {
            return Ok(None);
        };
        check(e)?;
        let io = |e: std::io::Error| bad(format!("cannot read the checkpoint: {e}"));
        self.r
            .seek(SeekFrom::Start(self.data_start + e.start))
            .map_err(io)?;
        let mut left = e.end - e.start;
        let mut buf = vec![0u8; (64 << 10) / unit * unit];
        while left > 0 {
            let k = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            self.r.read_exact(&mut buf[..k]).map_err(io)?;
            take(&buf[..k]);
            left -= k as u64;
        }
        Ok(Some(()))
    }

    /// Tensor `name` as `len` f32s of shape `shape`; `None` when absent.
    fn f32s(&mut self, name: &str, shape: &[usize], len: usize) -> Result<Option<Vec<f32>>> {
        let check = |e: &Entry| {
            if e.dtype != "F32" || e.shape != shape || e.end - e.start != len as u64 * 4 {
                return Err(bad(format!(
                    "tensor {name} is {} {:?}, expected F32 {shape:?}",
                    e.dtype, e.shape
                )));
            }
            Ok(())
        };
        let mut out = Vec::new();
        let found = self.stream(name, 4, check, |b| {
            out.reserve_exact(len.saturating_sub(out.len()));
            out.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            )
        })?;
        Ok(found.map(|()| out))
    }

    /// Tensor `name` as `n` f64s, which must be there.
    fn f64s(&mut self, name: &str, n: usize) -> Result<Vec<f64>> {
        let check = |e: &Entry| {
            if e.dtype != "F64" || e.shape != [n] {
                return Err(bad(format!("tensor {name} does not match lbfgs.pairs")));
            }
            Ok(())
        };
        let mut out = Vec::new();
        self.stream(name, 8, check, |b| {
            out.extend(
                b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))),
            )
        })?
        .ok_or_else(|| bad(format!("the checkpoint has no tensor {name}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(optimizer: OptimizerState) -> Checkpoint {
        let v = |k: f32| -> Vec<f32> { (0..3 * 5 * 2).map(|i| i as f32 * k - 1.5).collect() };
        Checkpoint {
            scale: 1,
            iteration: 7,
            size: (5, 2),
            image: v(1.0),
            previous: Some(v(-0.5)),
            refreshed: Some(v(0.25)),
            optimizer,
            elapsed: Duration::from_nanos(123_456_789),
            recent_losses: vec![1.5e6, f64::MIN_POSITIVE, 0.1 + 0.2],
            fingerprint: vec![
                ("objective".into(), "Config { \"a\\b\" \n }".into()),
                ("seed".into(), "3".into()),
            ],
        }
    }

    #[test]
    fn every_state_round_trips_exactly() {
        let v = |k: f32| -> Vec<f32> { (0..30).map(|i| (i as f32).sin() * k).collect() };
        for opt in [
            OptimizerState::Stateless,
            OptimizerState::Lbfgs(LbfgsState {
                pairs: vec![(v(1.0), v(2.0), 0.1), (v(3.0), v(4.0), 1e-300)],
                last: Some((v(5.0), v(6.0))),
                h_diag: std::f64::consts::PI,
            }),
            OptimizerState::Lbfgs(LbfgsState {
                pairs: Vec::new(),
                last: None,
                h_diag: 1.0,
            }),
            OptimizerState::Adam(AdamState {
                moments: Some((v(0.1), v(0.2))),
                steps: 9,
            }),
            OptimizerState::Adam(AdamState {
                moments: None,
                steps: 0,
            }),
        ] {
            let c = state(opt);
            let bytes = c.to_bytes().unwrap();
            assert_eq!(Checkpoint::from_bytes(&bytes).unwrap(), c);
            assert!(c.differences(&c.fingerprint).is_empty());
            // Every truncation is an error, never a panic.
            for cut in (0..bytes.len()).step_by(7) {
                assert!(
                    Checkpoint::from_bytes(&bytes[..cut]).is_err(),
                    "cut at {cut}"
                );
            }
        }
    }

    /// The streaming reader and the safetensors crate read the same file alike; a file the
    /// reader would misread (gaps, overlaps, lengths that disagree, a header past the end) is
    /// refused; and reading from a file takes the same path as from bytes.
    #[test]
    fn the_reader_agrees_with_safetensors_and_refuses_what_does_not_add_up() {
        let c = state(OptimizerState::Lbfgs(LbfgsState {
            pairs: vec![(vec![1.0; 30], vec![2.0; 30], 0.5)],
            last: Some((vec![3.0; 30], vec![4.0; 30])),
            h_diag: 0.25,
        }));
        let bytes = c.to_bytes().unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut r = Reader::open(std::io::Cursor::new(&bytes)).unwrap();
        for name in st.names() {
            let t = st.tensor(name).unwrap();
            let mut got = Vec::new();
            r.stream(name, 4, |_| Ok(()), |b| got.extend_from_slice(b))
                .unwrap()
                .unwrap();
            assert_eq!(got, t.data(), "{name}");
        }
        let path = std::env::temp_dir().join(format!("nst-ck-{}.ckpt", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let from_file = Checkpoint::read_from(std::fs::File::open(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(from_file, c);
        // One byte more or less, a header longer than the file, a tensor moved: refused.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Checkpoint::from_bytes(&longer).is_err());
        assert!(Checkpoint::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        assert!(Checkpoint::from_bytes(&huge).is_err());
        let text = String::from_utf8_lossy(&bytes).to_string();
        let at = text.find("\"data_offsets\":[0,").unwrap();
        let mut moved = bytes.clone();
        moved[at + 16] = b'4';
        assert!(Checkpoint::from_bytes(&moved).is_err());
        assert!(Checkpoint::from_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn differences_name_each_setting() {
        let c = state(OptimizerState::Stateless);
        let now = vec![
            (
                "objective".to_string(),
                "Config { \"a\\b\" \n }".to_string(),
            ),
            ("seed".to_string(), "4".to_string()),
            ("threads".to_string(), "2".to_string()),
        ];
        let d = c.differences(&now);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].starts_with("seed (3 in the checkpoint, 4 now)"),
            "{d:?}"
        );
        assert!(
            d[1].starts_with("threads (absent in the checkpoint"),
            "{d:?}"
        );
    }
}
