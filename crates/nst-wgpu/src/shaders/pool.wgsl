// Pooling without padding, floor mode. p(1) kind (0 max, 1 average), p(2) in_h, p(3) in_w,
// p(4) kernel, p(5) stride, p(6) out_h, p(7) out_w; p(0) the element count of what is
// written.

// The in-plane index of the window's maximum, the first in row-major order on ties.
fn argmax(base: u32, oy: u32, ox: u32) -> u32 {
    let w = p(3u);
    let k = p(4u);
    let s = p(5u);
    var best = (oy * s) * w + ox * s;
    for (var ky = 0u; ky < k; ky++) {
        let row = (oy * s + ky) * w + ox * s;
        for (var i = row; i < row + k; i++) {
            if (a[base + i] > a[base + best]) {
                best = i;
            }
        }
    }
    return best;
}

@compute @workgroup_size(256)
fn pool_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    let oh = p(6u);
    let ow = p(7u);
    let plane = i / (oh * ow);
    let oy = (i / ow) % oh;
    let ox = i % ow;
    let base = plane * p(2u) * p(3u);
    if (p(1u) == 0u) {
        out[i] = a[base + argmax(base, oy, ox)];
    } else {
        let k = p(4u);
        let s = p(5u);
        var sum = 0.0;
        for (var ky = 0u; ky < k; ky++) {
            for (var kx = 0u; kx < k; kx++) {
                sum += a[base + (oy * s + ky) * p(3u) + ox * s + kx];
            }
        }
        out[i] = sum / f32(k * k);
    }
}

// One invocation per input element: the sum over the windows holding it of their output
// gradient (b), where it is the window's maximum (max) or divided by the window's size.
@compute @workgroup_size(256)
fn pool_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= p(0u)) { return; }
    let h = p(2u);
    let w = p(3u);
    let k = p(4u);
    let s = p(5u);
    let oh = p(6u);
    let ow = p(7u);
    let plane = i / (h * w);
    let iy = (i / w) % h;
    let ix = i % w;
    let base = plane * h * w;
    let here = iy * w + ix;
    // Windows oy with oy*s <= iy < oy*s + k.
    let oy0 = select(0u, (iy + s - k) / s, iy + 1u > k);
    let ox0 = select(0u, (ix + s - k) / s, ix + 1u > k);
    let oy1 = min(iy / s + 1u, oh);
    let ox1 = min(ix / s + 1u, ow);
    var g = 0.0;
    for (var oy = oy0; oy < oy1; oy++) {
        for (var ox = ox0; ox < ox1; ox++) {
            let d = b[(plane * oh + oy) * ow + ox];
            if (p(1u) == 0u) {
                if (argmax(base, oy, ox) == here) {
                    g += d;
                }
            } else {
                g += d / f32(k * k);
            }
        }
    }
    out[i] = g;
}
