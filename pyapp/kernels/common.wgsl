// Per-step values, written once per forward step (one queue write).
struct Params {
  T: u32,        // tokens in this step
  pos0: u32,     // tokens already in the KV cache (absolute position of row 0)
  seed: u32,     // sampling seed
  step: u32,     // index of the token being sampled
  top_k: u32,    // 0 = off
  greedy: u32,   // 1 = argmax
  temp: f32,
  top_p: f32,
};
@group(0) @binding(0) var<uniform> p: Params;
