//! The tape's bookkeeping: accumulation, constants, errors.

use super::{cpu, rand_tensor};
use nst_autodiff::Tape;
use nst_tensor::Tensor;

#[test]
fn x_times_x_sums_both_uses() {
    let b = cpu();
    let tape = Tape::new();
    let x = tape.var(Tensor::from_f64(&b, &[3.0, -2.0], [2]).unwrap());
    let y = x.mul(&x).unwrap().sum().unwrap();
    let g = tape.backward(&y).unwrap();
    assert_eq!(g.get(&x).unwrap().to_f64().unwrap(), vec![6.0, -4.0]);
}

#[test]
fn diamond_accumulates() {
    // y = (2x) + (x²): dy/dx = 2 + 2x.
    let b = cpu();
    let tape = Tape::new();
    let x = tape.var(Tensor::from_f64(&b, &[1.5, -0.5, 4.0], [3]).unwrap());
    let left = x.scale(2.0).unwrap();
    let right = x.square().unwrap();
    let y = left.add(&right).unwrap().sum().unwrap();
    let g = tape.backward(&y).unwrap();
    assert_eq!(g.get(&x).unwrap().to_f64().unwrap(), vec![5.0, 1.0, 10.0]);
}

#[test]
fn constants_get_no_gradient() {
    let b = cpu();
    let tape = Tape::new();
    let x = tape.var(rand_tensor(&b, &[1, 2, 5, 5], 1, 0.0));
    let w = tape.constant(rand_tensor(&b, &[3, 2, 3, 3], 2, 0.0));
    let y = x.conv2d(&w, None, 1, 1).unwrap().sum().unwrap();
    assert!(!w.requires_grad());
    let g = tape.backward(&y).unwrap();
    assert!(g.get(&w).is_none());
    assert_eq!(g.get(&x).unwrap().dims(), &[1, 2, 5, 5]);
}

#[test]
fn unrelated_variable_has_no_gradient() {
    let b = cpu();
    let tape = Tape::new();
    let x = tape.var(rand_tensor(&b, &[4], 1, 0.0));
    let z = tape.var(rand_tensor(&b, &[4], 2, 0.0));
    let y = x.sum().unwrap();
    let g = tape.backward(&y).unwrap();
    assert!(g.get(&z).is_none());
    assert!(g.get(&x).is_some());
}

#[test]
fn backward_twice_is_an_error() {
    let b = cpu();
    let tape = Tape::new();
    let x = tape.var(rand_tensor(&b, &[4], 1, 0.0));
    let y = x.square().unwrap().sum().unwrap();
    tape.backward(&y).unwrap();
    assert!(tape.backward(&y).is_err());
}

#[test]
fn non_scalar_loss_is_an_error() {
    let b = cpu();
    let tape = Tape::new();
    let x = tape.var(rand_tensor(&b, &[4], 1, 0.0));
    let err = tape.backward(&x).err().unwrap();
    assert!(err.to_string().contains("scalar"), "{err}");
}

#[test]
fn shape_errors_name_the_op() {
    let b = cpu();
    let tape = Tape::new();
    let x = tape.var(rand_tensor(&b, &[4], 1, 0.0));
    let y = tape.var(rand_tensor(&b, &[5], 1, 0.0));
    let err = x.add(&y).err().unwrap().to_string();
    assert!(
        err.contains("add") && err.contains("[4]") && err.contains("[5]"),
        "{err}"
    );
}

#[test]
fn vars_of_two_tapes_are_refused() {
    let cpu = nst_cpu::Cpu::new(1);
    let (t1, t2) = (Tape::new(), Tape::new());
    let t = |v: &[f32]| Tensor::from_f32(&cpu, v, [v.len()]).unwrap();
    let a = t1.var(t(&[1.0, 2.0]));
    let b = t2.var(t(&[3.0, 4.0]));
    for err in [
        a.add(&b).unwrap_err(),
        a.sub(&b).unwrap_err(),
        a.mul(&b).unwrap_err(),
    ] {
        assert!(err.to_string().contains("different tapes"), "{err}");
    }
    let m = t1.var(Tensor::from_f32(&cpu, &[1.0; 4], [2, 2]).unwrap());
    let n = t2.var(Tensor::from_f32(&cpu, &[1.0; 4], [2, 2]).unwrap());
    assert!(m.matmul(&n).is_err());
    let x = t1.var(Tensor::from_f32(&cpu, &[1.0; 16], [1, 1, 4, 4]).unwrap());
    let w = t2.constant(Tensor::from_f32(&cpu, &[1.0; 9], [1, 1, 3, 3]).unwrap());
    assert!(x.conv2d(&w, None, 1, 1).is_err());
    assert!(x.conv2d_relu(&w, None, 1, 1).is_err());
    // Gradients answer only for their own tape's variables.
    let loss = a.mul(&a).unwrap().sum().unwrap();
    let g = t1.backward(&loss).unwrap();
    assert!(g.get(&a).is_some());
    // `b` has the same node id on its tape as `a` on its own.
    assert!(g.get(&b).is_none());
}

#[test]
fn custom_ops_are_checked() {
    let cpu = nst_cpu::Cpu::new(1);
    let (t1, t2) = (Tape::new(), Tape::new());
    let t = |v: &[f32]| Tensor::from_f32(&cpu, v, [v.len()]).unwrap();
    let a = t1.var(t(&[1.0, 2.0]));
    let b = t2.var(t(&[1.0, 2.0]));
    assert!(t1.custom(t(&[0.0]), &[&a, &b], |_| Ok(vec![])).is_err());
    // Too few gradients, or one of the wrong shape: an error at backward, not a panic.
    let y = t1.custom(t(&[3.0]), &[&a], |_| Ok(vec![])).unwrap();
    assert!(t1.backward(&y).is_err());
    let y = t1
        .custom(t(&[3.0]), &[&a], move |_| {
            Ok(vec![
                Tensor::from_f32(&nst_cpu::Cpu::new(1), &[1.0], [1]).unwrap()
            ])
        })
        .unwrap();
    assert!(t1.backward(&y).is_err());
    // A constant input gets nothing, a variable its gradient.
    let c = t1.constant(t(&[5.0, 6.0]));
    let keep = t(&[7.0, 8.0]);
    let y = t1
        .custom(t(&[1.0]), &[&a, &c], move |_| {
            Ok(vec![keep.clone(), keep.clone()])
        })
        .unwrap();
    let g = t1.backward(&y).unwrap();
    assert_eq!(g.get(&a).unwrap().to_f32().unwrap(), vec![7.0, 8.0]);
    assert!(g.get(&c).is_none());
}
