// Data movement. p(0): the output's element count.

// p(1): the rank r (at most 8); p(2 + d): the output's dims; p(10 + d): the input's stride of
// dim d (0 where the input's dim is 1); p(18): the global index of the output binding's first
// element.
@compute @workgroup_size(256)
fn broadcast(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    var rest = i + p(18u);
    var src = 0u;
    for (var d = i32(p(1u)) - 1; d >= 0; d--) {
        let dim = p(2u + u32(d));
        src += (rest % dim) * p(10u + u32(d));
        rest /= dim;
    }
    out[i] = a[src];
}

// [p(1) outer, p(2) full, p(3) inner] -> [outer, p(5) len, inner] from p(4) start.
@compute @workgroup_size(256)
fn narrow(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    let inner = p(3u);
    let len = p(5u);
    let j = i % inner;
    let k = (i / inner) % len;
    let o = i / (inner * len);
    out[i] = a[(o * p(2u) + p(4u) + k) * inner + j];
}

// The adjoint: [outer, len, inner] into a zero [outer, full, inner] at start.
@compute @workgroup_size(256)
fn narrow_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    let inner = p(3u);
    let full = p(2u);
    let start = p(4u);
    let len = p(5u);
    let j = i % inner;
    let k = (i / inner) % full;
    let o = i / (inner * full);
    var v = 0.0;
    if (k >= start && k < start + len) {
        v = a[(o * len + k - start) * inner + j];
    }
    out[i] = v;
}

// A p(1) x p(2) matrix transposed.
@compute @workgroup_size(256)
fn transpose(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    let rows = p(1u);
    let cols = p(2u);
    let r = i % rows;
    let col = i / rows;
    out[i] = a[r * cols + col];
}
