//! The feature extractor on its own: activations at named layers, in the order asked for,
//! with the layer table's channels and each pooling's halving; the same values with and
//! without a tape; clear errors for unknown layers and images too small for the deepest one.

use nst_autodiff::Tape;
use nst_cpu::Cpu64;
use nst_features::FeatureExtractor;
use nst_tensor::Tensor;
use nst_vgg::{Arch, Vgg};

fn model() -> Vgg<Cpu64> {
    Vgg::random_narrow_for_tests(&Cpu64::new(1), Arch::Vgg19, 8, 3).unwrap()
}

fn image(h: usize, w: usize) -> Tensor<Cpu64> {
    let data: Vec<f64> = (0..3 * h * w)
        .map(|i| ((i * 37) % 101) as f64 - 50.0)
        .collect();
    Tensor::from_f64(&Cpu64::new(1), &data, [1, 3, h, w]).unwrap()
}

#[test]
fn named_layers_in_the_order_asked_with_their_shapes() {
    let vgg = model();
    let layers = ["relu4_2", "relu1_1", "pool2", "relu3_1"];
    let fx = FeatureExtractor::new(&vgg, &layers).unwrap();
    assert_eq!(fx.layer_names().collect::<Vec<_>>(), layers);
    let f = fx.extract(&image(37, 50)).unwrap();
    assert_eq!(f.len(), 4);
    let names: Vec<&str> = f.iter().map(|(n, _)| n).collect();
    assert_eq!(names, layers);
    // Each pooling halves (floor): 37x50 -> 18x25 -> 9x12 -> 4x6.
    let expect = [
        ("relu1_1", 37, 50),
        ("pool2", 9, 12),
        ("relu3_1", 9, 12),
        ("relu4_2", 4, 6),
    ];
    for (name, h, w) in expect {
        let a = f.get(name).unwrap();
        assert_eq!(
            a.dims(),
            &[1, vgg.channels(vgg.layer_index(name).unwrap()), h, w],
            "{name}"
        );
    }
    // ReLU outputs are non-negative.
    assert!(f
        .get("relu3_1")
        .unwrap()
        .to_f64()
        .unwrap()
        .iter()
        .all(|&v| v >= 0.0));
}

#[test]
fn taped_and_plain_extraction_agree() {
    let vgg = model();
    let fx = FeatureExtractor::new(&vgg, &["relu2_1", "relu3_2"]).unwrap();
    let x = image(20, 24);
    let plain = fx.extract(&x).unwrap();
    let tape = Tape::new();
    let v = tape.var(x.clone());
    let taped = fx.extract_var(&v).unwrap();
    for ((n, a), (m, b)) in plain.iter().zip(taped.iter()) {
        assert_eq!(n, m);
        assert_eq!(a.to_f64().unwrap(), b.value().to_f64().unwrap(), "{n}");
    }
}

#[test]
fn unknown_layers_and_small_images_are_clear_errors() {
    let vgg = model();
    let err = FeatureExtractor::new(&vgg, &["relu9_9"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("relu9_9") && err.contains("relu4_2"), "{err}");
    let fx = FeatureExtractor::new(&vgg, &["relu5_1"]).unwrap();
    assert_eq!(fx.min_input_size(), 16);
    let err = fx.extract(&image(15, 40)).err().unwrap().to_string();
    assert!(
        err.contains("too small") && err.contains("relu5_1"),
        "{err}"
    );
    assert!(fx.extract(&image(16, 16)).is_ok());
}

/// The memory prediction by hand for the first block, and its growth with size and depth.
#[test]
fn the_predicted_memory_counts_parameters_activations_and_kept_copies() {
    let vgg = model();
    let c = vgg.channels(0);
    let fx = FeatureExtractor::new(&vgg, &["relu1_1"]).unwrap();
    let (w, h) = (64, 48);
    let px = w * h;
    // conv1_1's parameters twice; the image; relu1_1 made by the fused convolution, copied
    // out and serialised; 64 MB of slack.
    let floats = 2 * c * (3 * 9 + 1) + 3 * px + 3 * (c * px);
    assert_eq!(fx.predicted_bytes(w, h), 4 * floats as u64 + (64 << 20));
    // Four times the pixels: nearly four times the activations.
    let grow = |fx: &FeatureExtractor<Cpu64>| {
        (fx.predicted_bytes(2 * w, 2 * h) - (64 << 20)) as f64
            / (fx.predicted_bytes(w, h) - (64 << 20)) as f64
    };
    assert!((3.5..=4.0).contains(&grow(&fx)), "{}", grow(&fx));
    let deep = FeatureExtractor::new(&vgg, &["relu1_1", "relu4_2"]).unwrap();
    assert!(deep.predicted_bytes(w, h) > fx.predicted_bytes(w, h));
}
