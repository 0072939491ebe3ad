//! The settings of a render in a canonical form, for the fingerprint checkpoints record and
//! resumes compare: JSON with every object's keys sorted, no spaces, and numbers as the
//! shortest decimal that reads back to the same `f64`. Keys are named here, once, and do not
//! follow the Rust types' names or their `Debug` output, so renaming a field or reordering an
//! enum changes no fingerprint, and equal settings always give equal text.

use crate::{ColorControl, MatrixRoot, ObjectiveConfig, OptimizerKind, StyleLoss, Tiling};
use serde_json::{json, Value};

/// `v` as canonical JSON: keys sorted at every level, no whitespace.
pub(crate) fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A number; a non-finite one (which validation refuses before a fingerprint is made) as
/// its name.
fn number(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        json!(x.to_string())
    }
}

fn layers(l: &[(String, f64)]) -> Value {
    Value::Array(l.iter().map(|(n, w)| json!([n, number(*w)])).collect())
}

/// The objective's settings.
pub(crate) fn objective(o: &ObjectiveConfig) -> String {
    canonical(&json!({
        "content_weight": number(o.content_weight),
        "style_weight": number(o.style_weight),
        "tv_weight": number(o.tv_weight),
        "content_layers": layers(&o.content_layers),
        "style_layers": layers(&o.style_layers),
        "style_loss": o.style_loss.name(),
        "normalize_gradients": o.normalize_gradients,
        "nn": if o.style_loss == StyleLoss::Nn {
            json!({"refresh": o.nn.refresh, "augment": o.nn.augment})
        } else {
            Value::Null
        },
    }))
}

/// The optimizer's name.
pub(crate) fn optimizer(k: OptimizerKind) -> &'static str {
    match k {
        OptimizerKind::Lbfgs => "lbfgs",
        OptimizerKind::LbfgsWolfe => "lbfgs-wolfe",
        OptimizerKind::Adam => "adam",
        OptimizerKind::Gd => "gd",
    }
}

fn root(r: MatrixRoot) -> &'static str {
    match r {
        MatrixRoot::Pca => "pca",
        MatrixRoot::Cholesky => "chol",
        MatrixRoot::Symmetric => "sym",
    }
}

/// The colour control.
pub(crate) fn color_control(c: ColorControl) -> String {
    canonical(&match c {
        ColorControl::None => json!({"kind": "none"}),
        ColorControl::Luminance => json!({"kind": "luminance"}),
        ColorControl::Match(r) => json!({"kind": "match", "root": root(r)}),
        ColorControl::Palette(r) => json!({"kind": "palette", "root": root(r)}),
    })
}

/// Numbers.
pub(crate) fn numbers(x: &[f64]) -> String {
    canonical(&Value::Array(x.iter().copied().map(number).collect()))
}

/// One number.
pub(crate) fn one(x: f64) -> String {
    canonical(&number(x))
}

/// A tiling.
pub(crate) fn tiling(t: Tiling) -> String {
    canonical(&match t {
        Tiling::Off => json!({"kind": "off"}),
        Tiling::Tiles(tile) => json!({"kind": "tiles", "tile": tile}),
        Tiling::TilesKeeping { tile, keep } => {
            json!({"kind": "tiles", "tile": tile, "keep": keep})
        }
        Tiling::Shallow(tile) => json!({"kind": "shallow", "tile": tile}),
        Tiling::TilesWithHalo { tile, halo } => {
            json!({"kind": "tiles", "tile": tile, "halo": halo})
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The form is pinned: a change here is a change of every checkpoint's fingerprint.
    #[test]
    fn the_canonical_forms_are_pinned() {
        assert_eq!(
            objective(&ObjectiveConfig::default()),
            concat!(
                r#"{"content_layers":[["relu4_2",1.0]],"content_weight":5.0,"nn":null,"#,
                r#""normalize_gradients":false,"style_layers":[["relu1_1",1.0],["relu2_1",1.0],"#,
                r#"["relu3_1",1.0],["relu4_1",1.0],["relu5_1",1.0]],"style_loss":"gram","#,
                r#""style_weight":100.0,"tv_weight":0.001}"#
            )
        );
        assert_eq!(
            color_control(ColorControl::Palette(MatrixRoot::Cholesky)),
            r#"{"kind":"palette","root":"chol"}"#
        );
        assert_eq!(one(1e-3), "0.001");
        assert_eq!(numbers(&[0.7, 0.3]), "[0.7,0.3]");
        assert_eq!(one(f64::NAN), r#""NaN""#);
        assert_eq!(
            tiling(Tiling::TilesKeeping { tile: 416, keep: 3 }),
            r#"{"keep":3,"kind":"tiles","tile":416}"#
        );
        assert_eq!(optimizer(OptimizerKind::LbfgsWolfe), "lbfgs-wolfe");
    }

    /// Keys are sorted at every level whatever order they were built in, and text is escaped.
    #[test]
    fn keys_are_sorted_at_every_level() {
        let v = json!({"b": {"z": 1, "a": [{"y": 2, "x": "q\"r"}]}, "a": null});
        assert_eq!(
            canonical(&v),
            r#"{"a":null,"b":{"a":[{"x":"q\"r","y":2}],"z":1}}"#
        );
        // Nearest-neighbour settings enter only with that loss.
        let nn = ObjectiveConfig {
            style_loss: StyleLoss::Nn,
            ..ObjectiveConfig::default()
        };
        assert!(objective(&nn).contains(r#""nn":{"augment":false,"refresh":"#));
    }
}
