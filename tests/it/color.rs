//! Colour control in a render: luminance-only transfer keeps the content's chroma, colour
//! matching changes what the objective sees and nothing else.

use crate::{image_crop, weights};
use nst_cpu::Cpu;
use nst_style::{ColorControl, Image, MatrixRoot, RenderConfig, RenderSession};
use nst_vgg::Vgg;

/// BT.601 U and V of every pixel.
fn chroma(img: &Image) -> Vec<(f32, f32)> {
    img.data()
        .chunks_exact(3)
        .map(|c| {
            (
                -0.14713 * c[0] - 0.28886 * c[1] + 0.436 * c[2],
                0.615 * c[0] - 0.51499 * c[1] - 0.10001 * c[2],
            )
        })
        .collect()
}

fn render(vgg: &Vgg<Cpu>, be: &Cpu, color_control: ColorControl) -> Image {
    let content = Image::new(40, 32, image_crop("tubingen.jpg", 300, 150, 40, 32)).unwrap();
    let styles = [Image::new(36, 36, image_crop("starry_night.jpg", 100, 80, 36, 36)).unwrap()];
    let cfg = RenderConfig {
        color_control,
        ..RenderConfig::single_scale(6)
    };
    let mut s = RenderSession::new(be, vgg, &content, &styles, &cfg).unwrap();
    while s.step().unwrap().is_some() {}
    s.finish().unwrap().image
}

#[test]
fn luminance_transfer_keeps_the_content_chroma_and_match_differs_from_none() {
    let be = Cpu::new(2);
    let vgg = Vgg::from_safetensors(&be, &std::fs::read(weights()).unwrap()).unwrap();
    let content = Image::new(40, 32, image_crop("tubingen.jpg", 300, 150, 40, 32)).unwrap();
    let lum = render(&vgg, &be, ColorControl::Luminance);
    for ((u, v), (cu, cv)) in chroma(&lum).into_iter().zip(chroma(&content)) {
        assert!(
            (u - cu).abs() < 1e-3 && (v - cv).abs() < 1e-3,
            "{u},{v} vs {cu},{cv}"
        );
    }
    let none = render(&vgg, &be, ColorControl::None);
    let matched = render(&vgg, &be, ColorControl::Match(MatrixRoot::Pca));
    assert!(none != matched && none != lum);
    assert!(matched.data().iter().all(|v| v.is_finite()));
}
