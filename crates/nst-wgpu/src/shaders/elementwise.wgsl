// Elementwise ops. p(0): the element count.

// p(1): the op (0 relu, 1 square, 2 exp, 3 neg, 4 sqrt).
@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    let x = a[i];
    var y: f32;
    switch p(1u) {
        case 0u: { y = select(0.0, x, x > 0.0); }
        case 1u: { y = x * x; }
        case 2u: { y = exp(x); }
        case 3u: { y = -x; }
        default: { y = sqrt(x); }
    }
    out[i] = y;
}

// p(1): the op (0 add, 1 sub, 2 mul, 3 div, 4 relu gradient: b where a > 0).
@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    let x = a[i];
    let z = b[i];
    var y: f32;
    switch p(1u) {
        case 0u: { y = x + z; }
        case 1u: { y = x - z; }
        case 2u: { y = x * z; }
        case 3u: { y = x / z; }
        default: { y = select(0.0, z, x > 0.0); }
    }
    out[i] = y;
}

// x * p(1) + p(2) (as f32 bits).
@compute @workgroup_size(256)
fn affine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    out[i] = a[i] * pf(1u) + pf(2u);
}

// p(1): the value (f32 bits).
@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    out[i] = pf(1u);
}

// Planes of p(1) elements, plane k in channel k % p(2), clamped into [b[2c], b[2c+1]];
// NaN stays NaN. p(3): the global index of this binding's first element.
@compute @workgroup_size(256)
fn clamp_channels(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    let ch = ((i + p(3u)) / p(1u)) % p(2u);
    let lo = b[2u * ch];
    let hi = b[2u * ch + 1u];
    let x = a[i];
    out[i] = select(select(x, hi, x > hi), lo, x < lo);
}
