//! Mutations: generic byte-level ones, and per-format ones that keep enough structure for
//! the input to get past the first checks (pickle opcodes and globals, safetensors headers,
//! PNG chunk CRCs, zip archives around a pickle).

/// What a target's inputs are, for the structure-aware mutations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only byte-level mutations.
    Bytes,
    /// A stream of pickles.
    Pickle,
    /// A zip archive of a `torch.save` file.
    Zip,
    /// A safetensors file (8-byte length, JSON header, data).
    Safetensors,
    /// A PNG file (chunks with CRCs).
    Png,
}

/// SplitMix64: small, fast, and the same stream on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Integers that break length and offset arithmetic.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    3,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Pickle opcodes the reader knows, and some it refuses.
const OPCODES: &[u8] =
    b"(.)0}]ectuqhjJKMXNQRsabdlpgGIBCTU\x80\x81\x85\x86\x87\x88\x89\x8a\x8c\x8d\x94\x95";

/// Globals to swap into pickles.
const GLOBALS: [&[u8]; 6] = [
    b"torch._utils\n_rebuild_tensor_v2\n",
    b"collections\nOrderedDict\n",
    b"torch\nFloatStorage\n",
    b"torch\nHalfStorage\n",
    b"os\nsystem\n",
    b"builtins\neval\n",
];

fn interesting(rng: &mut Rng) -> u64 {
    let v = INTERESTING[rng.below(INTERESTING.len())];
    match rng.below(4) {
        0 => v.wrapping_add(1),
        1 => v.wrapping_sub(1),
        _ => v,
    }
}

/// One byte-level mutation of `data`.
fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let n = data.len();
    match rng.below(10) {
        0 if n > 0 => {
            let i = rng.below(n);
            data[i] ^= 1 << rng.below(8);
        }
        1 if n > 0 => {
            let i = rng.below(n);
            data[i] = interesting(rng) as u8;
        }
        2 | 3 if n > 0 => {
            // An integer field: 1, 2, 4 or 8 bytes, either byte order.
            let width = 1 << rng.below(4);
            let i = rng.below(n);
            let v = interesting(rng);
            let bytes = if rng.chance(2) {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let src = if rng.chance(2) { 0 } else { 8 - width };
            let w = width.min(n - i);
            data[i..i + w].copy_from_slice(&bytes[src..src + w]);
        }
        4 if n > 0 => data.truncate(rng.below(n)),
        5 => {
            let i = rng.below(n + 1);
            let len = 1 + rng.below(16);
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            data.splice(i..i, junk);
        }
        6 if n > 1 => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            data.drain(i..i + len);
        }
        7 if n > 1 => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            let chunk = data[i..i + len].to_vec();
            let at = rng.below(n + 1);
            data.splice(at..at, chunk);
        }
        8 if !seeds.is_empty() => {
            // Splice: the head of this input, the tail of another seed.
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(n + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ if n > 0 => {
            let i = rng.below(n);
            data[i] = rng.next() as u8;
        }
        _ => data.push(rng.next() as u8),
    }
}

/// Swaps an opcode for another, or one global's name for another.
fn mutate_pickle(rng: &mut Rng, data: &mut Vec<u8>) {
    if rng.chance(2) {
        // A `c` (GLOBAL) opcode: replace what follows up to its second newline.
        let globals: Vec<usize> = data
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'c')
            .map(|(i, _)| i)
            .collect();
        if !globals.is_empty() {
            let at = globals[rng.below(globals.len())] + 1;
            let end = data[at.min(data.len())..]
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .nth(1)
                .map(|(k, _)| at + k + 1);
            if let Some(end) = end {
                let g = GLOBALS[rng.below(GLOBALS.len())];
                data.splice(at..end, g.iter().copied());
                return;
            }
        }
    }
    if !data.is_empty() {
        let i = rng.below(data.len());
        data[i] = OPCODES[rng.below(OPCODES.len())];
    }
}

/// Edits a number in a safetensors header (shapes, offsets, metadata counts) and keeps the
/// length prefix consistent, most of the time.
fn mutate_safetensors(rng: &mut Rng, data: &mut Vec<u8>) {
    if data.len() < 8 {
        return;
    }
    let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
    if n > data.len() - 8 {
        return;
    }
    let header = data[8..8 + n].to_vec();
    let digits: Vec<(usize, usize)> = {
        let mut spans = Vec::new();
        let mut i = 0;
        while i < header.len() {
            if header[i].is_ascii_digit() {
                let s = i;
                while i < header.len() && header[i].is_ascii_digit() {
                    i += 1;
                }
                spans.push((s, i));
            } else {
                i += 1;
            }
        }
        spans
    };
    let mut new_header = header.clone();
    if !digits.is_empty() && rng.below(4) != 0 {
        let (s, e) = digits[rng.below(digits.len())];
        let v = match rng.below(3) {
            0 => interesting(rng).to_string(),
            1 => (rng.next() % 100_000).to_string(),
            _ => {
                let old: u64 = std::str::from_utf8(&header[s..e])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                old.wrapping_add(rng.below(9) as u64)
                    .wrapping_sub(4)
                    .to_string()
            }
        };
        new_header.splice(s..e, v.bytes());
    } else if !new_header.is_empty() {
        // Structure: swap two bytes of the header (quotes, brackets, names).
        let (a, b) = (rng.below(new_header.len()), rng.below(new_header.len()));
        new_header.swap(a, b);
    }
    let mut out = Vec::with_capacity(data.len() + 16);
    let len = if rng.chance(8) {
        interesting(rng)
    } else {
        new_header.len() as u64
    };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&new_header);
    out.extend_from_slice(&data[8 + n..]);
    *data = out;
}

/// The CRC-32 of PNG chunks.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Recomputes the CRC of every whole chunk, so the decoder reads past them.
fn fix_png_crcs(data: &mut [u8]) {
    let mut pos = 8;
    while pos + 12 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = pos.checked_add(12).and_then(|p| p.checked_add(len)) else {
            return;
        };
        if end > data.len() {
            return;
        }
        let crc = crc32(&data[pos + 4..pos + 8 + len]);
        data[pos + 8 + len..end].copy_from_slice(&crc.to_be_bytes());
        pos = end;
    }
}

/// A zip archive of `files`, stored (uncompressed) or deflated.
pub(crate) fn zip_of(files: &[(String, Vec<u8>)], deflate: bool) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opt = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in files {
        if z.start_file(name.as_str(), opt).is_err() || z.write_all(data).is_err() {
            return Vec::new();
        }
    }
    let _ = z.finish();
    buf.into_inner()
}

/// Rebuilds a zip archive with one member mutated as a pickle (or as bytes).
fn mutate_zip(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>]) -> bool {
    use std::io::Read;
    let Ok(mut z) = zip::ZipArchive::new(std::io::Cursor::new(data.as_slice())) else {
        return false;
    };
    let mut files = Vec::new();
    for i in 0..z.len() {
        let Ok(mut f) = z.by_index(i) else {
            return false;
        };
        let mut v = Vec::new();
        if f.size() > 1 << 20 || f.read_to_end(&mut v).is_err() {
            return false;
        }
        files.push((f.name().to_string(), v));
    }
    if files.is_empty() {
        return false;
    }
    let k = rng.below(files.len());
    if files[k].0.ends_with(".pkl") {
        mutate_pickle(rng, &mut files[k].1);
    } else {
        mutate_bytes(rng, &mut files[k].1, seeds);
    }
    if rng.chance(6) {
        files[k].0 = [
            "archive/data.pkl",
            "x/data/0",
            "archive/data/9",
            "../data.pkl",
        ][rng.below(4)]
        .to_string();
    }
    *data = zip_of(&files, rng.chance(3));
    true
}

/// A mutation of one of `seeds`: 1 to 4 steps, structure-aware for `kind` half the time.
pub(crate) fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], kind: Kind) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    let steps = 1 + rng.below(4);
    for _ in 0..steps {
        let structured = rng.chance(2);
        match kind {
            Kind::Pickle if structured => mutate_pickle(rng, &mut data),
            Kind::Safetensors if structured => mutate_safetensors(rng, &mut data),
            Kind::Zip if structured => {
                if !mutate_zip(rng, &mut data, seeds) {
                    mutate_bytes(rng, &mut data, seeds);
                }
            }
            _ => mutate_bytes(rng, &mut data, seeds),
        }
    }
    if kind == Kind::Png && rng.below(4) != 0 {
        fix_png_crcs(&mut data);
    }
    data
}
