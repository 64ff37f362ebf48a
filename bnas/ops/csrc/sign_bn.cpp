// Fused CPU kernels for the lean binary operation relu(conv(sign(BN(x)), W)) of BNAS's cells
// (Kim et al., ECCV 2020, Sec. 3.1) when the activation binarizer is sign with the clipped
// straight-through gradient (XNOR-Net; BNN): d sign(z)/dz = 1 where |z| < 1, else 0; or ReCU's
// sign(z / d) per sample with Bi-Real's gradient through the scaling (its forward value is
// sign(z) too, so the forward kernels serve both).
//
// Tensors are float32, contiguous NCHW, seen as n * c planes of hw elements. Every kernel runs
// on `threads` OpenMP threads (the caller passes torch.get_num_threads()); the library links
// libgomp.so.1, which resolves to the OpenMP runtime torch has already loaded, so the two share
// one thread pool.
//
// The forward kernels reproduce torch's CPU BatchNorm in training mode bit for bit (a sign is
// sensitive to the last bit of a value near zero):
//   * per channel, sum(x) and then sum((x - mean)^2) accumulate in double in the order n, h, w,
//     the float products rounded before they are added; mean = float(sum / N);
//   * invstd = float(1 / sqrt(double(float(var_sum) / N) + eps)) (0 when both terms are 0);
//   * running_mean = m * mean + (1 - m) * running_mean in float; running_var = m * double(
//     float(var_sum) / (N - 1)) + (1 - m) * running_var, the first product in double;
//   * z = x * alpha + beta with alpha = invstd * gamma and beta = bias - mean * alpha, both
//     fused multiply-adds where torch's vectorised kernel contracts them (BNAS_FMA).
// bnas.ops.native checks a probe against torch when it loads the library and does not use a
// build whose results differ. Channels are processed several at a time so that their
// independent double-precision sums overlap (one sum's additions are a dependency chain).
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

#ifndef BNAS_FMA
#define BNAS_FMA 1
#endif

namespace {

// Eight floats (GCC / Clang vector extensions: one AVX register, two SSE or NEON registers).
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
// Lanes of a where mask is set (all ones), of b elsewhere.
inline v8f select(v8i mask, v8f a, v8f b) { return (v8f)((mask & (v8i)a) | (~mask & (v8i)b)); }

inline float affine(float x, float alpha, float beta) {
#if BNAS_FMA
  return std::fma(x, alpha, beta);
#else
  return x * alpha + beta;
#endif
}

inline v8f affine(v8f x, float alpha, float beta) {
#if BNAS_FMA && defined(__FMA__)
  return __builtin_ia32_vfmaddps256(x, v8f{} + alpha, v8f{} + beta);
#elif BNAS_FMA
  v8f out;
  for (int k = 0; k < 8; ++k) out[k] = std::fma(x[k], alpha, beta);
  return out;
#else
  return x * alpha + beta;
#endif
}

inline float sign(float z) { return static_cast<float>((0.0f < z) - (z < 0.0f)); }

// Channel ch's z = x * alpha + beta: alpha = invstd * gamma, beta = bias - mean * alpha
// (torch's linear terms); gamma and bias may be null (1 and 0).
struct Linear {
  float alpha, beta;
  Linear(int64_t ch, const float* gamma, const float* bias, const float* mean,
         const float* invstd)
      : alpha(invstd[ch] * (gamma ? gamma[ch] : 1.0f)) {
    const float b = bias ? bias[ch] : 0.0f;
#if BNAS_FMA
    beta = std::fma(-mean[ch], alpha, b);
#else
    beta = b - mean[ch] * alpha;
#endif
  }
  float operator()(float x) const { return affine(x, alpha, beta); }
  v8f operator()(v8f x) const { return affine(x, alpha, beta); }
};

// The clipped straight-through gradient of sign at z: grad where |z| < 1, else 0 * grad (as
// torch's grad * mask).
inline float clipped(float z, float grad) { return std::fabs(z) < 1.0f ? grad : 0.0f * grad; }
inline v8f clipped(v8f z, v8f grad) {
  const v8i inside = (z < 1.0f) & (z > -1.0f);
  return select(inside, grad, grad * 0.0f);
}

// Mean and sum of squared deviations of channels c0 .. c0 + W - 1.
template <int W>
void channel_stats(const float* x, int64_t n, int64_t c, int64_t hw, int64_t c0, float* mean,
                   float* var_sum) {
  double acc[W];
  float m[W];
  for (int k = 0; k < W; ++k) acc[k] = 0.0;
  for (int64_t b = 0; b < n; ++b) {
    const float* p = x + (b * c + c0) * hw;
    for (int64_t i = 0; i < hw; ++i) {
#pragma GCC unroll 8
      for (int k = 0; k < W; ++k) acc[k] += p[k * hw + i];
    }
  }
  const int64_t count = n * hw;
  for (int k = 0; k < W; ++k) {
    m[k] = static_cast<float>(acc[k] / count);
    mean[c0 + k] = m[k];
    acc[k] = 0.0;
  }
  for (int64_t b = 0; b < n; ++b) {
    const float* p = x + (b * c + c0) * hw;
    for (int64_t i = 0; i < hw; ++i) {
#pragma GCC unroll 8
      for (int k = 0; k < W; ++k) {
        const float d = p[k * hw + i] - m[k];
        acc[k] += d * d;
      }
    }
  }
  for (int k = 0; k < W; ++k) var_sum[c0 + k] = static_cast<float>(acc[k]);
}

// Writes sign(z) (or z itself) of every element of x.
void apply(const float* x, int64_t n, int64_t c, int64_t hw, const float* gamma,
           const float* bias, const float* mean, const float* invstd, float* out, bool to_sign,
           int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < n * c; ++p) {
    const Linear z(p % c, gamma, bias, mean, invstd);
    const float* xp = x + p * hw;
    float* op = out + p * hw;
    if (to_sign) {
      for (int64_t i = 0; i < hw; ++i) op[i] = sign(z(xp[i]));
    } else {
      for (int64_t i = 0; i < hw; ++i) op[i] = z(xp[i]);
    }
  }
}

// Channels lo .. hi - 1 of bnas_bn_sign_forward's statistics, eight, four, two or one at a time.
void stats_range(const float* x, int64_t n, int64_t c, int64_t hw, int64_t lo, int64_t hi,
                 float* mean, float* var_sum) {
  for (; lo + 8 <= hi; lo += 8) channel_stats<8>(x, n, c, hw, lo, mean, var_sum);
  for (; lo + 4 <= hi; lo += 4) channel_stats<4>(x, n, c, hw, lo, mean, var_sum);
  for (; lo + 2 <= hi; lo += 2) channel_stats<2>(x, n, c, hw, lo, mean, var_sum);
  for (; lo < hi; ++lo) channel_stats<1>(x, n, c, hw, lo, mean, var_sum);
}

// Bytes of a plane's bit mask: planes start on a byte, so threads never share one.
inline int64_t plane_bytes(int64_t hw) { return (hw + 7) / 8; }

// Bit k of the result is set where lane k of v is positive.
inline uint8_t positive_bits(v8f v) {
  const v8i positive = v > 0.0f;
#if defined(__AVX__)
  return static_cast<uint8_t>(__builtin_ia32_movmskps256((v8f)positive));
#else
  unsigned bits = 0;
  for (int k = 0; k < 8; ++k) bits |= static_cast<unsigned>(positive[k] & 1) << k;
  return static_cast<uint8_t>(bits);
#endif
}

// 1.0f in lane k where bit k of byte is set, 0.0f elsewhere.
inline v8f unpack_bits(uint8_t byte) {
  const v8i lanes = {1, 2, 4, 8, 16, 32, 64, 128};
  const v8i set = (lanes & static_cast<int32_t>(byte)) != 0;
  return select(set, v8f{} + 1.0f, v8f{});
}

// Sums over one plane of the K terms that term(x, g) gives for elements x of xp and g of gp
// (called on eight elements at a time as v8f, then on the tail as float): each term summed in
// eight SIMD lanes, the lanes added in order, then the tail.
template <int K, class Term>
std::array<float, K> plane_sums(const float* xp, const float* gp, int64_t hw, Term term) {
  std::array<v8f, K> lanes{};
  int64_t i = 0;
  for (; i + 8 <= hw; i += 8) {
    const std::array<v8f, K> t = term(load8(xp + i), load8(gp + i));
    for (int j = 0; j < K; ++j) lanes[j] += t[j];
  }
  std::array<float, K> sums{};
  for (int j = 0; j < K; ++j) {
    for (int k = 0; k < 8; ++k) sums[j] += lanes[j][k];
  }
  for (; i < hw; ++i) {
    const std::array<float, K> t = term(xp[i], gp[i]);
    for (int j = 0; j < K; ++j) sums[j] += t[j];
  }
  return sums;
}

// The clipped straight-through gradient of sign at z: grad where |z| < 1.
struct ClippedGrad {
  float operator()(float z, float grad, int64_t) const { return clipped(z, grad); }
  v8f operator()(v8f z, v8f grad, int64_t) const { return clipped(z, grad); }
};

// ReCU's activation gradient (bnas_scaled_bireal_backward): surrogate() is Bi-Real's slope at
// z / d[b] times the gradient; the call operator goes on through the per-sample scaling.
struct ScaledBirealGrad {
  const float* inv_d;  // 1 / d[b]
  const float* m;      // per-sample means
  const float* coef;   // per-sample sum(g' * z) / ((count - 1) * d)

  float surrogate(float z, float grad, int64_t b) const {
    const float slope = 2.0f - 2.0f * std::fabs(z * inv_d[b]);
    return (slope > 0.0f ? slope : 0.0f) * grad;
  }
  v8f surrogate(v8f z, v8f grad, int64_t b) const {
    const v8f y = z * inv_d[b];
    const v8f slope = 2.0f - 2.0f * select(y < 0.0f, -y, y);
    return select(slope > 0.0f, slope, v8f{}) * grad;
  }
  float operator()(float z, float grad, int64_t b) const {
    return (surrogate(z, grad, b) - (z - m[b]) * inv_d[b] * coef[b]) * inv_d[b];
  }
  v8f operator()(v8f z, v8f grad, int64_t b) const {
    return (surrogate(z, grad, b) - (z - m[b]) * inv_d[b] * coef[b]) * inv_d[b];
  }
};

// BatchNorm's training-mode input gradient from dz = dz_of(z, dxb, sample), z = BN(x)
// recomputed as in the forward pass: dx = (dz - mean(dz) - (x - mean) * k) * invstd * gamma
// with k = sum((x - mean) * dz) * invstd^2 / N, dgamma = sum((x - mean) * dz) * invstd,
// dbeta = sum(dz). Channels run in parallel; each plane's sums run in SIMD lanes, the planes'
// sums are added in double.
template <class Grad>
void bn_input_backward(const float* dxb, const float* x, int64_t n, int64_t c, int64_t hw,
                       const float* gamma, const float* bias, const float* mean,
                       const float* invstd, float* dx, float* dgamma, float* dbeta, int threads,
                       Grad dz_of) {
  const int64_t count = n * hw;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t ch = 0; ch < c; ++ch) {
    const Linear z(ch, gamma, bias, mean, invstd);
    const float mu = mean[ch];
    double sum = 0.0, dot = 0.0;
    for (int64_t b = 0; b < n; ++b) {
      const auto [s, d] = plane_sums<2>(
          x + (b * c + ch) * hw, dxb + (b * c + ch) * hw, hw, [&](auto xv, auto gv) {
            const auto dz = dz_of(z(xv), gv, b);
            return std::array{dz, (xv - mu) * dz};
          });
      sum += s;
      dot += d;
    }
    const float is = invstd[ch];
    if (dgamma) dgamma[ch] = static_cast<float>(dot * is);
    if (dbeta) dbeta[ch] = static_cast<float>(sum);
    if (!dx) continue;
    const float k = static_cast<float>(dot) * is * is / count;
    const float grad_mean = static_cast<float>(sum) / count;
    const float w = gamma ? gamma[ch] : 1.0f;
    for (int64_t b = 0; b < n; ++b) {
      const float* xp = x + (b * c + ch) * hw;
      const float* gp = dxb + (b * c + ch) * hw;
      float* op = dx + (b * c + ch) * hw;
      int64_t i = 0;
      for (; i + 8 <= hw; i += 8) {
        const v8f xv = load8(xp + i), dz = dz_of(z(xv), load8(gp + i), b);
        store8(op + i, (dz - grad_mean - (xv - mu) * k) * is * w);
      }
      for (; i < hw; ++i) {
        const float dz = dz_of(z(xp[i]), gp[i], b);
        op[i] = (dz - grad_mean - (xp[i] - mu) * k) * is * w;
      }
    }
  }
}

}  // namespace

extern "C" {

// sign(BN(x)) in training mode: batch statistics (and the running statistics' update, when
// running_mean is given), out = sign(z) (or z when to_sign is 0), mean and invstd for backward.
// gamma, bias, running_mean and running_var may be null.
void bnas_bn_sign_forward(const float* x, int64_t n, int64_t c, int64_t hw, const float* gamma,
                          const float* bias, float* running_mean, float* running_var,
                          double momentum, double eps, float* mean, float* invstd, float* out,
                          int to_sign, int threads) {
  std::vector<float> var_sum(c);
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), parts = omp_get_num_threads();
    stats_range(x, n, c, hw, c * t / parts, c * (t + 1) / parts, mean, var_sum.data());
  }
  const int64_t count = n * hw;
  const float m = static_cast<float>(momentum);
  for (int64_t ch = 0; ch < c; ++ch) {
    const double var = var_sum[ch] / count;
    invstd[ch] = var == 0.0 && eps == 0.0 ? 0.0f : static_cast<float>(1.0 / std::sqrt(var + eps));
    if (running_mean) running_mean[ch] = m * mean[ch] + (1 - m) * running_mean[ch];
    if (running_var) {
      const double unbiased = var_sum[ch] / (count - 1);
      running_var[ch] = static_cast<float>(m * unbiased + (1 - m) * running_var[ch]);
    }
  }
  apply(x, n, c, hw, gamma, bias, mean, invstd, out, to_sign != 0, threads);
}

// sign(BN(x)) (or BN(x) when to_sign is 0) with given batch statistics: the backward pass's
// recomputation of the forward's binary input.
void bnas_bn_sign_apply(const float* x, int64_t n, int64_t c, int64_t hw, const float* gamma,
                        const float* bias, const float* mean, const float* invstd, float* out,
                        int to_sign, int threads) {
  apply(x, n, c, hw, gamma, bias, mean, invstd, out, to_sign != 0, threads);
}

// In place: y = relu(y * scale[ch]) * factor[b]; mask gets one bit per element, bit i % 8 of
// byte i / 8 of each plane's (hw + 7) / 8 bytes, set where relu's output is positive.
// scale and factor may be null.
void bnas_relu_mask(float* y, int64_t n, int64_t c, int64_t hw, const float* scale,
                    const float* factor, uint8_t* mask, int threads) {
  const int64_t bytes = plane_bytes(hw);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < n * c; ++p) {
    const float s = scale ? scale[p % c] : 1.0f;
    const float f = factor ? factor[p / c] : 1.0f;
    float* yp = y + p * hw;
    uint8_t* mp = mask + p * bytes;
    for (int64_t j = 0; j < bytes; ++j) {
      float* g = yp + 8 * j;
      const int64_t len = hw - 8 * j < 8 ? hw - 8 * j : 8;
      if (len == 8) {
        v8f v = load8(g);
        if (scale) v *= s;
        v = select(v < 0.0f, v8f{}, v);  // relu; -0.0 and NaN pass as torch's
        mp[j] = positive_bits(v);
        store8(g, factor ? v * f : v);
        continue;
      }
      unsigned bits = 0;
      for (int64_t i = 0; i < len; ++i) {
        float v = scale ? g[i] * s : g[i];
        v = v < 0.0f ? 0.0f : v;
        bits |= static_cast<unsigned>(v > 0.0f) << i;
        g[i] = factor ? v * f : v;
      }
      mp[j] = static_cast<uint8_t>(bits);
    }
  }
}

// out = grad * mask * factor[b]: the gradient at the convolution's output, with the mask of
// bnas_relu_mask (and the scale left to the caller, which folds it into the weight).
void bnas_mask_grad(const float* grad, const uint8_t* mask, int64_t n, int64_t c, int64_t hw,
                    const float* factor, float* out, int threads) {
  const int64_t bytes = plane_bytes(hw);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < n * c; ++p) {
    const float f = factor ? factor[p / c] : 1.0f;
    const float* gp = grad + p * hw;
    const uint8_t* mp = mask + p * bytes;
    float* op = out + p * hw;
    for (int64_t j = 0; j < bytes; ++j) {
      const int64_t len = hw - 8 * j < 8 ? hw - 8 * j : 8;
      if (len == 8) {
        const v8f v = load8(gp + 8 * j) * unpack_bits(mp[j]);
        store8(op + 8 * j, factor ? v * f : v);
        continue;
      }
      for (int64_t i = 0; i < len; ++i) {
        const float v = gp[8 * j + i] * static_cast<float>((mp[j] >> i) & 1u);
        op[8 * j + i] = factor ? v * f : v;
      }
    }
  }
}

// Backward of sign(BN(x)) with the clipped straight-through gradient, given the gradient at
// the binary input: dz = dxb where |z| < 1 (z recomputed as in the forward pass), then
// BatchNorm's input gradient (bn_input_backward). dx, dgamma and dbeta may be null (not wanted).
void bnas_bn_sign_backward(const float* dxb, const float* x, int64_t n, int64_t c, int64_t hw,
                           const float* gamma, const float* bias, const float* mean,
                           const float* invstd, float* dx, float* dgamma, float* dbeta,
                           int threads) {
  bn_input_backward(dxb, x, n, c, hw, gamma, bias, mean, invstd, dx, dgamma, dbeta, threads,
                    ClippedGrad{});
}

// Per sample b of z = BN(x) (batch statistics mean, invstd): the mean m[b] and
// d[b] = sqrt(var + eps) over its c * hw values, var unbiased (sums in double).
void bnas_sample_moments(const float* x, int64_t n, int64_t c, int64_t hw, const float* gamma,
                         const float* bias, const float* mean, const float* invstd, double eps,
                         float* m, float* d, int threads) {
  const int64_t count = c * hw;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < n; ++b) {
    double sum = 0.0, squares = 0.0;
    for (int64_t ch = 0; ch < c; ++ch) {
      const Linear z(ch, gamma, bias, mean, invstd);
      const float* xp = x + (b * c + ch) * hw;
      const auto [s, q] = plane_sums<2>(xp, xp, hw, [&](auto xv, auto) {
        const auto zv = z(xv);
        return std::array{zv, zv * zv};
      });
      sum += s;
      squares += q;
    }
    const double mu = sum / count;
    const double var = count > 1 ? (squares - sum * mu) / (count - 1) : 0.0;
    m[b] = static_cast<float>(mu);
    d[b] = static_cast<float>(std::sqrt((var > 0.0 ? var : 0.0) + eps));
  }
}

// Backward of ReCU's training-mode activation binarizer on z = BN(x) (Xu et al., ICCV 2021):
// y = z / d[b] per sample, sign(y) forward, Bi-Real's max(0, 2 - 2|y|) backward
// (Liu et al., ECCV 2018, Eq. 5), then through the scaling y = z / d with d = sqrt(var + eps)
// (bnas.binarize.normalize, "not centred"):
//   g' = slope(y) * dxb,  dz = (g' - ((z - m[b]) / d[b]) * coef[b]) / d[b],
//   coef[b] = sum(g' * z) / ((count - 1) * d[b]) over the sample's count = c * hw values;
// then BatchNorm's input gradient (bn_input_backward). dx, dgamma and dbeta may be null.
void bnas_scaled_bireal_backward(const float* dxb, const float* x, int64_t n, int64_t c,
                                 int64_t hw, const float* gamma, const float* bias,
                                 const float* mean, const float* invstd, const float* m,
                                 const float* d, float* dx, float* dgamma, float* dbeta,
                                 int threads) {
  std::vector<float> inv_d(n), coef(n);
  const int64_t count = c * hw;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < n; ++b) {
    inv_d[b] = 1.0f / d[b];
    const ScaledBirealGrad slope{inv_d.data(), nullptr, nullptr};
    double sum = 0.0;
    for (int64_t ch = 0; ch < c; ++ch) {
      const Linear z(ch, gamma, bias, mean, invstd);
      sum += plane_sums<1>(x + (b * c + ch) * hw, dxb + (b * c + ch) * hw, hw,
                           [&](auto xv, auto gv) {
                             const auto zv = z(xv);
                             return std::array{slope.surrogate(zv, gv, b) * zv};
                           })[0];
    }
    coef[b] = count > 1 ? static_cast<float>(sum / ((count - 1) * static_cast<double>(d[b])))
                        : 0.0f;
  }
  bn_input_backward(dxb, x, n, c, hw, gamma, bias, mean, invstd, dx, dgamma, dbeta, threads,
                    ScaledBirealGrad{inv_d.data(), m, coef.data()});
}

}  // extern "C"
