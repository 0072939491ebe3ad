//! Valid inputs for every target, built here so the campaign needs no files: what
//! `torch.save` writes for a small state dict (zip and legacy), safetensors weights in nst's
//! layout, checkpoints of each optimizer, and small images in each format and bit depth.

use crate::mutate::zip_of;
use nst_optim::{AdamState, LbfgsState};
use nst_style::{Checkpoint, Image, OptimizerState};

/// Pickle protocol 2, written opcode by opcode.
#[derive(Default)]
struct Pk(Vec<u8>);

impl Pk {
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// BINUNICODE.
    fn text(self, s: &str) -> Self {
        let len = (s.len() as u32).to_le_bytes();
        self.raw(b"X").raw(&len).raw(s.as_bytes())
    }
    /// BININT.
    fn num(self, v: i32) -> Self {
        self.raw(b"J").raw(&v.to_le_bytes())
    }
    fn nums(mut self, v: &[i32]) -> Self {
        self = self.raw(b"(");
        for &x in v {
            self = self.num(x);
        }
        self.raw(b"t")
    }
}

/// `{name: tensor}` as `torch.save` pickles it; `legacy` storages carry a view slot.
fn state_dict(tensors: &[(&str, &str, i32, &[i32])], legacy: bool) -> Vec<u8> {
    let mut p = Pk::default().raw(b"\x80\x02}q\x00(");
    for (name, key, numel, shape) in tensors {
        let stride: Vec<i32> = (0..shape.len())
            .map(|i| shape[i + 1..].iter().product())
            .collect();
        p = p
            .text(name)
            .raw(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01((")
            .text("storage")
            .raw(b"ctorch\nFloatStorage\nq\x02")
            .text(key)
            .text("cpu")
            .num(*numel);
        if legacy {
            p = p.raw(b"N");
        }
        p = p
            .raw(b"tQ")
            .num(0)
            .nums(shape)
            .nums(&stride)
            .raw(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    p.raw(b"u.").0
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
        .collect()
}

fn pickles() -> Vec<Vec<u8>> {
    vec![
        state_dict(&[("features.0.weight", "0", 6, &[2, 3])], false),
        state_dict(&[("a", "0", 4, &[4]), ("b", "1", 6, &[3, 2])], true),
        b"\x80\x02]q\x00(K\x01K\x02M\x00\x01e.".to_vec(),
        b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01\x88X\x01\x00\x00\x00bq\x02K\x07u.".to_vec(),
        b"\x80\x02(K\x01K\x02tq\x00h\x00\x86q\x01.".to_vec(),
    ]
}

fn legacy() -> Vec<Vec<u8>> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.");
    f.extend_from_slice(b"\x80\x02M\xe9\x03.");
    f.extend_from_slice(b"\x80\x02}(X\x0d\x00\x00\x00little_endianq\x00\x88u.");
    f.extend(state_dict(
        &[("w", "k7", 5, &[5]), ("v", "k8", 2, &[2])],
        true,
    ));
    f.extend_from_slice(b"\x80\x02](X\x02\x00\x00\x00k7X\x02\x00\x00\x00k8e.");
    for n in [5u64, 2] {
        f.extend_from_slice(&n.to_le_bytes());
        f.extend(f32_bytes(n as usize));
    }
    vec![f]
}

fn zips() -> Vec<Vec<u8>> {
    let pkl = state_dict(
        &[
            ("conv.weight", "0", 8, &[2, 4]),
            ("conv.bias", "1", 2, &[2]),
        ],
        false,
    );
    let files = vec![
        ("archive/data.pkl".to_string(), pkl),
        ("archive/data/0".to_string(), f32_bytes(8)),
        ("archive/data/1".to_string(), f32_bytes(2)),
        ("archive/version".to_string(), b"3\n".to_vec()),
    ];
    vec![zip_of(&files, false), zip_of(&files, true)]
}

fn safetensors_file(tensors: &[(String, Vec<usize>)], meta: &[(&str, &str)]) -> Vec<u8> {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| f32_bytes(s.iter().product()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .expect("a valid view");
            (n.clone(), v)
        })
        .collect();
    let meta = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize(views, Some(meta)).expect("serializable")
}

fn weights() -> Vec<Vec<u8>> {
    // VGG19's 16 convolutions: the first with its real shape, the rest tiny (so a loader gets
    // through the first layer and stops at the second).
    let names = [
        "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
        "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3", "conv5_4",
    ];
    let mut t = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let (w, b) = if i == 0 {
            (vec![64, 3, 3, 3], vec![64])
        } else {
            (vec![1, 1, 3, 3], vec![1])
        };
        t.push((format!("{n}.weight"), w));
        t.push((format!("{n}.bias"), b));
    }
    vec![
        safetensors_file(&t, &[("nst.input_convention", "caffe-bgr")]),
        safetensors_file(&t[..4], &[]),
    ]
}

fn checkpoints() -> Vec<Vec<u8>> {
    let (w, h) = (4, 3);
    let v = |k: f32| -> Vec<f32> { (0..3 * w * h).map(|i| i as f32 * k).collect() };
    let fingerprint = vec![
        ("content".to_string(), "0123456789abcdef".to_string()),
        ("iterations".to_string(), "10".to_string()),
    ];
    let base = Checkpoint {
        scale: 0,
        iteration: 3,
        size: (w, h),
        image: v(1.0),
        previous: Some(v(0.5)),
        refreshed: Some(v(0.75)),
        optimizer: OptimizerState::Lbfgs(LbfgsState {
            pairs: vec![(v(0.1), v(0.2), 0.5), (v(0.3), v(0.4), 0.25)],
            last: Some((v(0.01), v(0.02))),
            h_diag: 0.75,
        }),
        elapsed: std::time::Duration::from_millis(1500),
        recent_losses: vec![3.5e6, 3.4e6],
        fingerprint,
    };
    let adam = Checkpoint {
        optimizer: OptimizerState::Adam(AdamState {
            moments: Some((v(0.1), v(0.01))),
            steps: 3,
        }),
        ..base.clone()
    };
    let end = Checkpoint {
        iteration: 10,
        previous: None,
        optimizer: OptimizerState::Stateless,
        ..base.clone()
    };
    [base, adam, end]
        .iter()
        .map(|c| c.to_bytes().expect("a checkpoint"))
        .collect()
}

fn picture(w: usize, h: usize) -> Image {
    let data = (0..w * h * 3)
        .map(|i| ((i * 37) % 256) as f32 + 0.4)
        .collect();
    Image::new(w, h, data).expect("a size")
}

fn images(format: image::ImageFormat) -> Vec<Vec<u8>> {
    use image::ImageEncoder;
    let img = picture(13, 9);
    let mut out = Vec::new();
    for (bit_depth, icc) in [(8, None), (16, Some(b"fuzz-icc".to_vec()))] {
        let opts = nst_io::SaveOptions {
            bit_depth,
            icc,
            ..nst_io::SaveOptions::default()
        };
        if let Ok(b) = nst_io::encode(&img, format, &opts) {
            out.push(b);
        }
    }
    let gray: Vec<u8> = (0..13 * 9).map(|i| (i * 3) as u8).collect();
    let mut cur = std::io::Cursor::new(Vec::new());
    let encoded = match format {
        image::ImageFormat::Jpeg => {
            let mut e = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut cur, 80);
            // EXIF with an orientation, so the orientation path is fuzzed too.
            let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
            exif.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]);
            let _ = e.set_exif_metadata(exif);
            e.write_image(&gray, 13, 9, image::ExtendedColorType::L8)
        }
        image::ImageFormat::Png => image::codecs::png::PngEncoder::new(&mut cur).write_image(
            &gray,
            13,
            9,
            image::ExtendedColorType::L8,
        ),
        _ => Ok(()),
    };
    if encoded.is_ok() && !cur.get_ref().is_empty() {
        out.push(cur.into_inner());
    }
    out
}

/// Text seeds, as bytes.
fn texts(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|t| t.as_bytes().to_vec()).collect()
}

/// Lines of a jobs file that `nst batch` accepts.
fn batch_lines() -> Vec<Vec<u8>> {
    texts(&[
        r#"{"content": "photo.jpg", "style": "painting.jpg", "out": "out/a.png"}"#,
        r#"{"content": "p.jpg", "style": ["a.jpg", "b.jpg"], "style-blend": "0.7,0.3", "out": "b.png", "size": 256, "seed": 7}"#,
        r#"{"--content": "/data/p,1.jpg", "--style": "s.png", "--out": "o.tif", "style_weight": 1e5, "scales": "128:300,256:200", "style-layers": "relu1_1:1,relu2_1:0.5", "original-colors": true, "tv-weight": 0}"#,
        r#"{"content": "p.jpg", "style": "s.jpg", "out": "o.png", "quality": "draft", "style-loss": "nn", "nn-refresh": 25, "color-control": "palette", "init": "noise"}"#,
    ])
}

/// Web view requests; `{HOST}` and `{TOKEN}` stand for the server's address and token.
fn http_requests() -> Vec<Vec<u8>> {
    let big = format!(
        "GET /settings?token={{TOKEN}} HTTP/1.1\r\nHost: {{HOST}}\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(16 << 10)
    );
    let mut out = texts(&[
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
        "GET /progress?token={TOKEN} HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
        "GET /history HTTP/1.1\r\nHost: {HOST}\r\nX-Nst-Token: {TOKEN}\r\nAccept: */*\r\n\r\n",
        "POST /stop?token={TOKEN} HTTP/1.1\r\nHost: {HOST}\r\nOrigin: http://{HOST}\r\nContent-Length: 0\r\n\r\n",
        "GET /progress?token={TOKEN} HTTP/1.1\r\nHost: {HOST}\r\n\r\nGET /settings?token={TOKEN} HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
    ]);
    out.push(big.into_bytes());
    out
}

/// The seeds of a target (by the names in `main`).
pub(crate) fn for_target(name: &str) -> Vec<Vec<u8>> {
    match name {
        "pickle" => pickles(),
        "torch-legacy" => legacy(),
        "torch-zip" => zips(),
        "safetensors-weights" => weights(),
        "checkpoint" => checkpoints(),
        "png" => images(image::ImageFormat::Png),
        "jpeg" => images(image::ImageFormat::Jpeg),
        "tiff" => images(image::ImageFormat::Tiff),
        "webp" => images(image::ImageFormat::WebP),
        "batch-line" => batch_lines(),
        "scales" => texts(&[
            "256,512",
            "128:300, 256:200,512:100",
            "auto",
            "1024",
            "64:1",
        ]),
        "style-layers" => texts(&[
            "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1",
            "relu1_1:1,relu2_1:0.3,relu3_1:0.1,relu4_1:0.1",
            "conv3_4:2.5, pool2:1e-3",
        ]),
        "studio-spec" => texts(&[
            r#"{"content":"0123456789abcdef0123456789abcdef","styles":[{"upload":"fedcba9876543210fedcba9876543210"}]}"#,
            r#"{"content":"0123456789abcdef0123456789abcdef","styles":[{"upload":"fedcba9876543210fedcba9876543210","weight":2.5},{"upload":"00000000000000000000000000000000","weight":0.5}],"size":1024,"quality":"high","style_loss":"w2","color":"match","strength":-0.4,"seed":7,"iterations":300}"#,
            r#"{"content":"0123456789abcdef0123456789abcdef","styles":[{"upload":"fedcba9876543210fedcba9876543210"},{"upload":"00000000000000000000000000000000"}],"masks":["11111111111111111111111111111111","22222222222222222222222222222222"],"style_loss":"nn","strength":1}"#,
        ]),
        "http" => http_requests(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed is valid: the campaign starts from inputs that load.
    #[test]
    fn every_seed_loads() {
        for t in crate::targets() {
            let seeds = for_target(t.name);
            assert!(!seeds.is_empty(), "{}", t.name);
            for (i, s) in seeds.iter().enumerate() {
                // The weights seeds are meant to stop at the second layer.
                if t.name != "safetensors-weights" {
                    assert!((t.run)(s), "{} seed {i} does not load", t.name);
                }
            }
        }
    }
}
