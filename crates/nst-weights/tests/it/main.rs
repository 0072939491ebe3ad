//! Reading synthetic `torch.save` files (legacy and zip) and converting torchvision naming.
//!
//! The files are written here by a minimal pickle writer that emits exactly what
//! `torch.save(state_dict)` emits for float tensors: `_rebuild_tensor_v2` over persistent
//! storage ids, inside a dict.

use nst_weights::torch::{read_legacy, read_zip, Data, HostTensor};
use nst_weights::{convert, from_torchvision, SourceKind};
use std::io::Write;

/// A tensor entry: name, storage key, storage size, offset, size, stride.
type Entry<'a> = (&'a str, &'a str, usize, usize, &'a [usize], &'a [usize]);

struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 0x02])
    }
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: u32) -> &mut Self {
        self.0.push(b'J');
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn tuple(&mut self, vals: &[usize]) -> &mut Self {
        self.op(b"(");
        for &v in vals {
            self.int(v as u32);
        }
        self.op(b"t")
    }
    /// `name -> tensor(storage key, offset, size, stride)` entries of one dict.
    fn state_dict(entries: &[Entry<'_>], legacy: bool) -> Vec<u8> {
        let mut p = Pickle::new();
        p.op(b"}(");
        for (name, key, numel, offset, size, stride) in entries {
            p.str(name).op(b"ctorch._utils\n_rebuild_tensor_v2\n(");
            p.op(b"(")
                .str("storage")
                .op(b"ctorch\nFloatStorage\n")
                .str(key)
                .str("cpu")
                .int(*numel as u32);
            if legacy {
                p.op(b"N");
            }
            p.op(b"tQ").int(*offset as u32).tuple(size).tuple(stride);
            p.op(b"\x89ccollections\nOrderedDict\n)Rt").op(b"R");
        }
        p.op(b"u.");
        p.0
    }
}

fn floats(n: usize, base: f32) -> Vec<f32> {
    (0..n).map(|i| base + i as f32).collect()
}

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn zip_format_with_a_transposed_view() {
    // "a": 2x3 contiguous from storage 0; "b": the transpose of a 3x2 storage (stride 1, 2).
    let main = Pickle::state_dict(
        &[
            ("a", "0", 6, 0, &[2, 3], &[3, 1]),
            ("b", "1", 6, 0, &[2, 3], &[1, 2]),
        ],
        false,
    );
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opt = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opt).unwrap();
        z.write_all(&main).unwrap();
        z.start_file("archive/data/0", opt).unwrap();
        z.write_all(&le(&floats(6, 0.0))).unwrap();
        z.start_file("archive/data/1", opt).unwrap();
        z.write_all(&le(&floats(6, 10.0))).unwrap();
        z.finish().unwrap();
    }
    let t = read_zip(buf.get_ref()).unwrap();
    assert_eq!(t[0].0, "a");
    assert_eq!(
        t[0].1,
        HostTensor {
            shape: vec![2, 3],
            data: Data::F32(floats(6, 0.0))
        }
    );
    // Storage 10..16 laid out 3x2; its transpose row-major is 10,12,14,11,13,15.
    assert_eq!(
        t[1].1.data,
        Data::F32(vec![10.0, 12.0, 14.0, 11.0, 13.0, 15.0])
    );
}

#[test]
fn legacy_format_with_an_offset() {
    let mut file = Vec::new();
    file.extend_from_slice(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.");
    file.extend_from_slice(b"\x80\x02M\xe9\x03.");
    file.extend_from_slice(b"\x80\x02}(X\x0d\x00\x00\x00little_endian\x88u.");
    file.extend(Pickle::state_dict(&[("w", "k7", 5, 2, &[3], &[1])], true));
    file.extend_from_slice(b"\x80\x02](X\x02\x00\x00\x00k7e.");
    file.extend_from_slice(&5u64.to_le_bytes());
    file.extend(le(&floats(5, 1.0)));
    let t = read_legacy(&file).unwrap();
    assert_eq!(
        t,
        vec![(
            "w".to_string(),
            HostTensor {
                shape: vec![3],
                data: Data::F32(vec![3.0, 4.0, 5.0])
            }
        )]
    );
    // Truncated storage data is an error, not a panic.
    assert!(read_legacy(&file[..file.len() - 3]).is_err());
}

#[test]
fn torchvision_naming_maps_onto_conv_names() {
    let arch = nst_vgg::Arch::Vgg16;
    let mut named = Vec::new();
    for ((_, cin, cout), idx) in arch.convs().into_iter().zip(arch.torchvision_indices()) {
        named.push((
            format!("features.{idx}.weight"),
            HostTensor {
                shape: vec![cout, cin, 3, 3],
                data: Data::F32(vec![idx as f32; cout * cin * 9]),
            },
        ));
        named.push((
            format!("features.{idx}.bias"),
            HostTensor {
                shape: vec![cout],
                data: Data::F32(vec![-(idx as f32); cout]),
            },
        ));
    }
    let c = from_torchvision(named.clone()).unwrap();
    assert_eq!(c.arch, arch);
    let conv3_1 = c
        .tensors
        .iter()
        .find(|(n, _, _)| n == "conv3_1.weight")
        .unwrap();
    assert_eq!(conv3_1.1, vec![256, 128, 3, 3]);
    assert!(conv3_1.2.iter().all(|&v| v == 10.0));
    assert_eq!(
        c.metadata["input_convention"],
        nst_vgg::convention::TORCHVISION_RGB
    );

    // Round trip through our safetensors writer and back through `convert`.
    let bytes = c.to_safetensors();
    let (kind, again) = convert(&bytes).unwrap();
    assert_eq!(kind, SourceKind::Safetensors);
    assert_eq!(again.tensors, c.tensors);
    assert_eq!(
        again.metadata["input_convention"],
        nst_vgg::convention::TORCHVISION_RGB
    );

    // A wrong shape is named in the error.
    named[0].1.shape = vec![64, 3, 5, 5];
    let err = from_torchvision(named).unwrap_err().to_string();
    assert!(
        err.contains("features.0.weight") && err.contains("[64, 3, 5, 5]"),
        "{err}"
    );
}

#[test]
fn garbage_is_refused() {
    assert!(convert(b"").is_err());
    assert!(convert(b"hello world, not weights").is_err());
    assert!(convert(b"PK\x03\x04 broken zip").is_err());
}

/// Found by `cargo xtask fuzz`: a view whose size claims far more elements than its storage
/// made the reader reserve memory for all of them (62 GB) before checking the storage.
#[test]
fn a_view_larger_than_its_storage_is_refused_before_allocating() {
    for (size, stride) in [
        (&[65536usize, 65536, 65536][..], &[0usize, 0, 0][..]),
        (&[4, 4][..], &[1, 1][..]),
        (&[2][..], &[0x7fff_ffff][..]),
    ] {
        let main = Pickle::state_dict(&[("a", "0", 6, 0, size, stride)], false);
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let opt = zip::write::SimpleFileOptions::default();
            z.start_file("archive/data.pkl", opt).unwrap();
            z.write_all(&main).unwrap();
            z.start_file("archive/data/0", opt).unwrap();
            z.write_all(&le(&floats(6, 0.0))).unwrap();
            z.finish().unwrap();
        }
        let err = read_zip(buf.get_ref()).unwrap_err().to_string();
        assert!(err.contains("storage"), "{size:?}: {err}");
    }
}
