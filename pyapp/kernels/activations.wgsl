// The activation functions, one definition each: the elementwise kernels (unary.wgsl) and the
// gate/up GEMV pair's store (wgsl.act_pair) splice this file, so both compute the same values.
fn erfc_pos(z: f32) -> f32 {
  // Numerical Recipes erfcc: fractional error < 1.2e-7 for z >= 0
  let t = 1.0 / (1.0 + 0.5 * z);
  return t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
         t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
         t * (-0.82215223 + t * 0.17087277)))))))));
}
fn gelu(x: f32) -> f32 {
  let z = abs(x) * 0.70710678118654752;
  let c = erfc_pos(z);            // 1 - erf(|x|/sqrt2)
  if (x >= 0.0) { return 0.5 * x * (2.0 - c); }
  return 0.5 * x * c;
}
fn tanh_safe(v: f32) -> f32 {
  let e = exp(-2.0 * abs(v));
  let r = (1.0 - e) / (1.0 + e);
  return select(-r, r, v >= 0.0);
}
fn gelu_tanh(x: f32) -> f32 {
  return 0.5 * x * (1.0 + tanh_safe(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}
fn silu(x: f32) -> f32 { return x / (1.0 + exp(-x)); }
