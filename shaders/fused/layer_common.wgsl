// What the layer kernels of both shapes share: the input stream (B × K) as the left operand,
// the layer's weight and its 1/σ. Prepended to layer_forward.wgsl and layer_backward.wgsl.

override MODE: u32 = 0u;
override IN: u32 = 0u;        // input stream (B × K)
override W_OFF: u32 = 0u;     // W_l in theta
override SN_SLOT: u32 = NONE; // σ_l in sn

fn load_a(i: u32, k: u32) -> f32 { return ws[IN + i * K + k]; }

// Once per invocation, before any store: the layer's 1/σ.
var<private> scale: f32;
fn setup() { scale = inv_sigma(SN_SLOT); }
