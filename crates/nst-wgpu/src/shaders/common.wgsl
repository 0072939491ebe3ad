// Shared by every module: the parameters (32 u32, read with `p(i)`), up to three read-only
// operands and the output. Unused operands are bound to a one-element buffer.
struct Params { v: array<vec4<u32>, 8> }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn p(i: u32) -> u32 { return params.v[i / 4u][i % 4u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(p(i)); }

// The flat index of an invocation of a 256-wide kernel dispatched on a 2-D grid of
// workgroups (one dimension holds at most 65535).
fn flat(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid;
}
