// Reductions in a fixed order: the same inputs give the same bits.

var<workgroup> part: array<f32, 256>;

// Workgroup g sums a[g * p(1) .. min(p(0), (g + 1) * p(1))] into out[p(2) + g]: each
// invocation strides through the chunk, then a tree in workgroup memory.
@compute @workgroup_size(256)
fn sum_chunks(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let g = wg.y * nwg.x + wg.x;
    let n = p(0u);
    let chunk = p(1u);
    let start = g * chunk;
    let end = min(n, start + chunk);
    var s = 0.0;
    for (var i = start + lid; i < end; i += 256u) {
        s += a[i];
    }
    part[lid] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid < w) {
            part[lid] += part[lid + w];
        }
        workgroupBarrier();
    }
    if (lid == 0u && start < max(n, 1u)) {
        out[p(2u) + g] = part[0];
    }
}

// A tensor seen as [p(1) outer, p(2) summed, p(3) inner] into [outer, inner]; p(0) = outer *
// inner. Each invocation sums its column in order.
@compute @workgroup_size(256)
fn sum_axis(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    let n = p(2u);
    let inner = p(3u);
    let o = i / inner;
    let j = i % inner;
    var s = 0.0;
    for (var k = 0u; k < n; k++) {
        s += a[(o * n + k) * inner + j];
    }
    out[i] = s;
}
