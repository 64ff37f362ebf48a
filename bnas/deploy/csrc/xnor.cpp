// Bit-packed XNOR / popcount kernels of bnas's inference engine (bnas.deploy).
//
// A binary convolution of the float model computes, per output channel o and position q,
// alpha[o] * sum_k x_b[k] * w_b[o, k] with x_b in {-1, 0, +1} (0: zero padding and sign(0))
// and w_b in {-1, +1}. Here the +-1 values are bits (+1 -> 0, -1 -> 1), 64 input channels to a
// 64-bit word, and for two +-1 values x * w = 1 - 2 * (bit(x) XOR bit(w)), so over the taps
//   dot = K_real - 2 * popcount(bits(x) XOR bits(w))        (K_real: the real taps only)
// Channels past C_in in the last word carry bit 0 in input and weight (XOR 0, adds nothing).
// Padded positions are packed as +1 (bit 0); the popcount then counts +1 * w_b there, which the
// caller's per-border-class table subtracts (`corr`), and an interior zero (sign(0) = 0 of the
// float model) is packed as +1 too and its taps' weights subtracted per output (`extra`).
// Inputs with many zeros (a ReLU's output) take the masked mode instead: a second bit plane
// marks the nonzero inputs (padding and zeros 0) and dot = popcount(m) - 2 * popcount((x^w) & m).
// The result, an exact integer, is multiplied by alpha[o] once: the float model's
// conv(sign(x), sign(W)) * alpha.
//
// Layouts. Float tensors are contiguous NCHW (as the float model keeps them). A packed input is
// n x words x hp x wrow 64-bit words: word j of a pixel holds channels 64j..64j+63; rows carry
// the zero padding; for a consumer of stride s a row's columns are split in s phases
// (column c at (c % s) * wc + c / s, wc = ceil(wp / s)), so that the inputs of consecutive
// outputs are consecutive words whatever the stride and dilation. Weights are
// O_pad x words x taps words (O_pad a multiple of 8, extra rows zero).
//
// Paths, chosen at run time by the caller (bnas.deploy.kernels): AVX-512 with VPOPCNTDQ
// (8 output positions in the 64-bit lanes of a zmm register, 8 output channels x 3 such vectors
// of accumulators), AVX2 (4 positions per ymm, popcount by two nibble lookups per byte, bytes
// summed per lane with vpsadbw) and portable C++. Each path is compiled for its instruction set
// with function target attributes only: the library itself assumes the x86-64 (or any) base
// ISA, and nothing runs an instruction the CPU check did not find.
//
// Every kernel runs on `threads` OpenMP threads (libgomp: the runtime torch has loaded).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BNAS_X86 1
#else
#define BNAS_X86 0
#endif

namespace {

// ---------------------------------------------------------------------------------------------
// Packing: bits of z < t, z = x * scale + shift (torch's eval BatchNorm arithmetic, its
// multiply-add fused or not as torch's build does it) or z = x; t = 0 or a per-sample threshold
// (the per-sample mean of RBNN's and SiMaN's standardised activations: sign(z - m) = sign of the
// comparison). z == t is sign 0: recorded in `zeros` when `zero_is_zero`.
struct Pack {
  const float* x;
  int64_t n, c, h, w;
  const float* scale;   // per channel, or null (z = x)
  const float* shift;
  const float* thresh;  // per sample, or null (t = 0)
  int fma;
  int zero_is_zero;
  int64_t pt, pl, hp, wrow, wc, s;
  uint64_t* out;
  uint64_t* nz;  // or null: where z != t, in out's layout (the masked mode)
  int64_t* zeros;
  int64_t zcap;
  int64_t* zcount;
};

inline float affine(float x, float a, float b, bool fma) {
  return fma ? std::fma(x, a, b) : x * a + b;
}

// The words of pixels x0 .. x0 + len - 1 of a row to their places: column c of the padded row
// at (c % s) * wc + c / s (stepped, not divided, per pixel).
inline void store_row(const Pack& p, int64_t at, int64_t x0, int64_t len, const uint64_t* acc,
                      const uint64_t* nonzero) {
  const int64_t col = x0 + p.pl;
  int64_t phase = col % p.s, index = col / p.s;
  for (int64_t i = 0; i < len; ++i) {
    const int64_t pos = at + phase * p.wc + index;
    p.out[pos] = acc[i];
    if (p.nz) p.nz[pos] = nonzero[i];
    if (++phase == p.s) {
      phase = 0;
      ++index;
    }
  }
}

// Rare: the flat index of each sign(0) of a row segment, for the exact correction.
template <bool BN, bool FMA>
void record_zeros(const Pack& p, int64_t b, int64_t j, int64_t y, int64_t x0, int64_t len,
                  float t) {
  const int64_t chans = std::min<int64_t>(64, p.c - 64 * j);
  for (int64_t cc = 0; cc < chans; ++cc) {
    const int64_t ch = 64 * j + cc;
    const float* src = p.x + ((b * p.c + ch) * p.h + y) * p.w + x0;
    for (int64_t i = 0; i < len; ++i) {
      const float z = BN ? affine(src[i], p.scale[ch], p.shift[ch], FMA) : src[i];
      if (z == t) {
        const int64_t k = __atomic_fetch_add(p.zcount, 1, __ATOMIC_RELAXED);
        if (k < p.zcap) p.zeros[k] = ((b * p.c + ch) * p.h + y) * p.w + x0 + i;
      }
    }
  }
}

template <bool BN, bool FMA>
__attribute__((always_inline)) inline void pack_row(const Pack& p, int64_t b, int64_t j,
                                                    int64_t y) {
  const int64_t chans = std::min<int64_t>(64, p.c - 64 * j);
  const float t = p.thresh ? p.thresh[b] : 0.0f;
  const int64_t at = ((b * ((p.c + 63) / 64) + j) * p.hp + y + p.pt) * p.wrow;
  alignas(64) uint64_t acc[64];
  alignas(64) uint64_t nonzero[64];
  for (int64_t x0 = 0; x0 < p.w; x0 += 64) {
    const int64_t len = std::min<int64_t>(64, p.w - x0);
    for (int64_t i = 0; i < 64; ++i) acc[i] = nonzero[i] = 0;
    int anyzero = 0;
    for (int64_t cc = 0; cc < chans; ++cc) {
      const int64_t ch = 64 * j + cc;
      const float* src = p.x + ((b * p.c + ch) * p.h + y) * p.w + x0;
      const uint64_t bit = uint64_t(1) << cc;
      const float a = BN ? p.scale[ch] : 1.0f, sh = BN ? p.shift[ch] : 0.0f;
      for (int64_t i = 0; i < len; ++i) {
        const float z = BN ? affine(src[i], a, sh, FMA) : src[i];
        acc[i] |= (z < t) ? bit : uint64_t(0);
        nonzero[i] |= (z != t || !p.zero_is_zero) ? bit : uint64_t(0);
        anyzero |= (z == t);
      }
    }
    if (anyzero && p.zero_is_zero && !p.nz) record_zeros<BN, FMA>(p, b, j, y, x0, len, t);
    store_row(p, at, x0, len, acc, nonzero);
  }
}

// One row of one word plane, with the BatchNorm variant chosen.
__attribute__((always_inline)) inline void pack_row_any(const Pack& p, int64_t b, int64_t j,
                                                        int64_t y) {
  if (!p.scale) pack_row<false, false>(p, b, j, y);
  else if (p.fma) pack_row<true, true>(p, b, j, y);
  else pack_row<true, false>(p, b, j, y);
}

// The row function of each path: the same code, vectorised by the compiler for the path's
// instruction set (AVX-512: written out with mask registers below).
using RowFn = void (*)(const Pack&, int64_t, int64_t, int64_t);
void row_portable(const Pack& p, int64_t b, int64_t j, int64_t y) { pack_row_any(p, b, j, y); }
#if BNAS_X86
// AVX2: per channel, 8 pixels per compare; each half of the compare's lanes, widened to 64
// bits, selects the channel's bit for 4 sign and nonzero words.
template <bool BN, bool FMA>
__attribute__((target("avx2,fma"))) void row256(const Pack& p, int64_t b, int64_t j, int64_t y) {
  const int64_t chans = std::min<int64_t>(64, p.c - 64 * j);
  const float t = p.thresh ? p.thresh[b] : 0.0f;
  const __m256 tv = _mm256_set1_ps(t);
  const int64_t at = ((b * ((p.c + 63) / 64) + j) * p.hp + y + p.pt) * p.wrow;
  alignas(32) uint64_t acc[32], nonzero[32];
  alignas(32) float tail[8];
  for (int64_t x0 = 0; x0 < p.w; x0 += 32) {
    const int64_t len = std::min<int64_t>(32, p.w - x0);
    const int vecs = static_cast<int>((len + 7) / 8);
    __m256i a[8], m[8];
    for (int v = 0; v < 8; ++v) a[v] = m[v] = _mm256_setzero_si256();
    int anyzero = 0;
    for (int64_t cc = 0; cc < chans; ++cc) {
      const int64_t ch = 64 * j + cc;
      const float* src = p.x + ((b * p.c + ch) * p.h + y) * p.w + x0;
      const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(uint64_t(1) << cc));
      const __m256 sc = _mm256_set1_ps(BN ? p.scale[ch] : 1.0f);
      const __m256 sh = _mm256_set1_ps(BN ? p.shift[ch] : 0.0f);
      for (int v = 0; v < vecs; ++v) {
        const int64_t left = len - 8 * v;
        __m256 z;
        if (left >= 8) {
          z = _mm256_loadu_ps(src + 8 * v);
        } else {  // the row's last pixels; the rest compare as t (neither sign nor zero kept)
          for (int i = 0; i < 8; ++i) tail[i] = i < left ? src[8 * v + i] : 0.0f;
          z = _mm256_load_ps(tail);
        }
        if (BN) z = FMA ? _mm256_fmadd_ps(z, sc, sh) : _mm256_add_ps(_mm256_mul_ps(z, sc), sh);
        if (left < 8) z = _mm256_blendv_ps(tv, z, _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(static_cast<int>(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))));
        const __m256i lt = _mm256_castps_si256(_mm256_cmp_ps(z, tv, _CMP_LT_OQ));
        __m256i ne = _mm256_castps_si256(_mm256_cmp_ps(z, tv, _CMP_NEQ_UQ));
        if (left < 8 || !p.zero_is_zero) {
          const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)),
                                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
          if (!p.zero_is_zero) ne = live;
          anyzero |= _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(ne, live)));
        } else {
          anyzero |= ~_mm256_movemask_ps(_mm256_castsi256_ps(ne)) & 0xff;
        }
        for (int half = 0; half < 2; ++half) {
          const __m256i l = _mm256_cvtepi32_epi64(half ? _mm256_extracti128_si256(lt, 1)
                                                       : _mm256_castsi256_si128(lt));
          const __m256i n = _mm256_cvtepi32_epi64(half ? _mm256_extracti128_si256(ne, 1)
                                                       : _mm256_castsi256_si128(ne));
          a[2 * v + half] = _mm256_or_si256(a[2 * v + half], _mm256_and_si256(l, bit));
          m[2 * v + half] = _mm256_or_si256(m[2 * v + half], _mm256_and_si256(n, bit));
        }
      }
    }
    for (int v = 0; v < 8; ++v) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(acc + 4 * v), a[v]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(nonzero + 4 * v), m[v]);
    }
    if (anyzero && p.zero_is_zero && !p.nz) record_zeros<BN, FMA>(p, b, j, y, x0, len, t);
    store_row(p, at, x0, len, acc, nonzero);
  }
}

__attribute__((target("avx2,fma"))) void row_avx2(const Pack& p, int64_t b, int64_t j,
                                                  int64_t y) {
  if (!p.scale) row256<false, false>(p, b, j, y);
  else if (p.fma) row256<true, true>(p, b, j, y);
  else row256<true, false>(p, b, j, y);
}

// 64 pixels at a time: per channel, 8 pixels per compare, whose mask sets the channel's bit in
// the 64-bit lanes of the sign and nonzero words.
template <bool BN, bool FMA>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma")))
void row512(const Pack& p, int64_t b, int64_t j, int64_t y) {
  const int64_t chans = std::min<int64_t>(64, p.c - 64 * j);
  const float t = p.thresh ? p.thresh[b] : 0.0f;
  const __m256 tv = _mm256_set1_ps(t);
  const int64_t at = ((b * ((p.c + 63) / 64) + j) * p.hp + y + p.pt) * p.wrow;
  alignas(64) uint64_t acc[64], nonzero[64];
  for (int64_t x0 = 0; x0 < p.w; x0 += 64) {
    const int64_t len = std::min<int64_t>(64, p.w - x0);
    const int vecs = static_cast<int>((len + 7) / 8);
    __m512i a[8], m[8];
    for (int v = 0; v < 8; ++v) a[v] = m[v] = _mm512_setzero_si512();
    unsigned anyzero = 0;
    for (int64_t cc = 0; cc < chans; ++cc) {
      const int64_t ch = 64 * j + cc;
      const float* src = p.x + ((b * p.c + ch) * p.h + y) * p.w + x0;
      const __m512i bit = _mm512_set1_epi64(static_cast<long long>(uint64_t(1) << cc));
      const __m256 sc = _mm256_set1_ps(BN ? p.scale[ch] : 1.0f);
      const __m256 sh = _mm256_set1_ps(BN ? p.shift[ch] : 0.0f);
      for (int v = 0; v < vecs; ++v) {
        const int64_t left = len - 8 * v;
        const __mmask8 live = left >= 8 ? 0xff : static_cast<__mmask8>((1u << left) - 1u);
        __m256 z = _mm256_maskz_loadu_ps(live, src + 8 * v);
        if (BN) z = FMA ? _mm256_fmadd_ps(z, sc, sh) : _mm256_add_ps(_mm256_mul_ps(z, sc), sh);
        const __mmask8 lt = _mm256_mask_cmp_ps_mask(live, z, tv, _CMP_LT_OQ);
        const __mmask8 ne = p.zero_is_zero ? _mm256_mask_cmp_ps_mask(live, z, tv, _CMP_NEQ_UQ)
                                           : live;
        a[v] = _mm512_mask_or_epi64(a[v], lt, a[v], bit);
        m[v] = _mm512_mask_or_epi64(m[v], ne, m[v], bit);
        anyzero |= static_cast<unsigned>(live & ~ne);
      }
    }
    for (int v = 0; v < 8; ++v) {
      _mm512_store_si512(acc + 8 * v, a[v]);
      _mm512_store_si512(nonzero + 8 * v, m[v]);
    }
    if (anyzero && p.zero_is_zero && !p.nz) record_zeros<BN, FMA>(p, b, j, y, x0, len, t);
    store_row(p, at, x0, len, acc, nonzero);
  }
}

__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma")))
void row_avx512(const Pack& p, int64_t b, int64_t j, int64_t y) {
  if (!p.scale) row512<false, false>(p, b, j, y);
  else if (p.fma) row512<true, true>(p, b, j, y);
  else row512<true, false>(p, b, j, y);
}
#endif

void pack_all(const Pack& p, int threads, RowFn row) {
  const int64_t words = (p.c + 63) / 64, rows = p.n * words * p.h;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) row(p, r / (words * p.h), (r / p.h) % words, r % p.h);
}

// ---------------------------------------------------------------------------------------------
// Convolution on packed inputs. Output positions are taken in tiles of V consecutive columns of
// one output row; a block is PV tiles x OB output channels of accumulators.
struct Conv {
  const uint64_t* in;
  const uint64_t* nz;  // or null; the masked mode: a product counts where the input bit is set
  int64_t plane, sample, wrow, s;  // plane = hp * wrow, sample = words * plane
  const uint64_t* w;
  const uint64_t* nibbles;  // the weights' low nibbles, then their high nibbles (AVX2)
  int64_t nibble_plane;     // words in each
  int64_t words, taps, o;
  const int64_t* off;  // per tap: word offset from a tile's base
  int64_t oy, ho, wo;
  int32_t k_real;
  const int32_t* rowclass;  // per output row: its border class
  const int32_t* corr;      // classes x o x wo: sum of the padded taps' weights
  const int32_t* extra;     // n x o x ho x wo (sign(0) corrections), or null
  const float* alpha;       // per output channel, or null
  float* out;
};

struct Tile {
  int64_t base;  // word offset of the tile's first input in a sample's plane
  int64_t oh, ow0;
  int lanes;
};

// Two ways to the integer sum. Unmasked: dot = k_real - 2 * popcount(x ^ w) - corr - extra
// (the padding and sign(0) read as +1, then corrected). Masked (inputs with many zeros): each
// input bit has a nonzero bit m, and dot = popcount(m) - 2 * popcount((x ^ w) & m) over the taps
// (padding and zeros have m = 0; no correction).
inline float finish(const Conv& c, int64_t b, int64_t o, int64_t oh, int64_t ow, int64_t count,
                    int64_t nonzero) {
  int32_t dot;
  if (c.nz) {
    dot = static_cast<int32_t>(nonzero) - 2 * static_cast<int32_t>(count);
  } else {
    dot = c.k_real - 2 * static_cast<int32_t>(count) -
          c.corr[(c.rowclass[oh] * c.o + o) * c.wo + ow];
    if (c.extra) dot -= c.extra[((b * c.o + o) * c.ho + oh) * c.wo + ow];
  }
  const float f = static_cast<float>(dot);
  return c.alpha ? f * c.alpha[o] : f;
}

template <int OB, int PV, bool MASKED>
void block_portable(const Conv& c, int64_t b, int64_t o0, const Tile* tiles, int tn) {
  const uint64_t* in = c.in + b * c.sample;
  const uint64_t* nz = MASKED ? c.nz + b * c.sample : nullptr;
  const int64_t wstride = c.words * c.taps;
  for (int p = 0; p < tn; ++p) {
    for (int l = 0; l < tiles[p].lanes; ++l) {
      int64_t cnt[OB] = {}, nonzero = 0;
      for (int64_t j = 0; j < c.words; ++j) {
        const int64_t at = j * c.plane + tiles[p].base + l;
        const uint64_t* wj = c.w + o0 * wstride + j * c.taps;
        for (int64_t t = 0; t < c.taps; ++t) {
          const uint64_t v = in[at + c.off[t]];
          const uint64_t m = MASKED ? nz[at + c.off[t]] : ~uint64_t(0);
          if (MASKED) nonzero += __builtin_popcountll(m);
          for (int o = 0; o < OB; ++o)
            cnt[o] += __builtin_popcountll((v ^ wj[o * wstride + t]) & m);
        }
      }
      for (int o = 0; o < OB && o0 + o < c.o; ++o) {
        const int64_t oh = tiles[p].oh, ow = tiles[p].ow0 + l;
        c.out[((b * c.o + o0 + o) * c.ho + oh) * c.wo + ow] =
            finish(c, b, o0 + o, oh, ow, cnt[o], nonzero);
      }
    }
  }
}

#if BNAS_X86
template <int OB, int PV, bool MASKED>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512vpopcntdq")))
void block_avx512(const Conv& c, int64_t b, int64_t o0, const Tile* tiles, int tn) {
  const uint64_t* in = c.in + b * c.sample;
  const uint64_t* nz = MASKED ? c.nz + b * c.sample : nullptr;
  const int64_t wstride = c.words * c.taps;
  __m512i acc[OB][PV], nonzero[PV];
  int64_t base[PV];
  for (int p = 0; p < PV; ++p) {
    base[p] = tiles[p < tn ? p : 0].base;
    nonzero[p] = _mm512_setzero_si512();
  }
  for (int o = 0; o < OB; ++o)
    for (int p = 0; p < PV; ++p) acc[o][p] = _mm512_setzero_si512();
  for (int64_t j = 0; j < c.words; ++j) {
    const uint64_t* src = in + j * c.plane;
    const uint64_t* wj = c.w + o0 * wstride + j * c.taps;
    for (int64_t t = 0; t < c.taps; ++t) {
      __m512i x[PV], m[PV];
      const int64_t off = c.off[t];
      for (int p = 0; p < PV; ++p) {
        x[p] = _mm512_loadu_si512(src + base[p] + off);
        if (MASKED) {
          m[p] = _mm512_loadu_si512(nz + j * c.plane + base[p] + off);
          nonzero[p] = _mm512_add_epi64(nonzero[p], _mm512_popcnt_epi64(m[p]));
        }
      }
      for (int o = 0; o < OB; ++o) {
        const __m512i wv = _mm512_set1_epi64(static_cast<long long>(wj[o * wstride + t]));
        for (int p = 0; p < PV; ++p) {
          // (x ^ w) & m in one ternary-logic instruction (truth table 0x28)
          const __m512i v = MASKED ? _mm512_ternarylogic_epi64(x[p], wv, m[p], 0x28)
                                   : _mm512_xor_si512(x[p], wv);
          acc[o][p] = _mm512_add_epi64(acc[o][p], _mm512_popcnt_epi64(v));
        }
      }
    }
  }
  const __m256i k = _mm256_set1_epi32(c.k_real);
  for (int p = 0; p < tn; ++p) {
    const Tile& tile = tiles[p];
    const __mmask8 mask = static_cast<__mmask8>((1u << tile.lanes) - 1u);
    for (int o = 0; o < OB && o0 + o < c.o; ++o) {
      const int64_t oc = o0 + o;
      const __m256i twice = _mm256_slli_epi32(_mm512_cvtepi64_epi32(acc[o][p]), 1);
      const int64_t at = ((b * c.o + oc) * c.ho + tile.oh) * c.wo + tile.ow0;
      __m256i dot;
      if (MASKED) {
        dot = _mm256_sub_epi32(_mm512_cvtepi64_epi32(nonzero[p]), twice);
      } else {
        dot = _mm256_sub_epi32(k, twice);
        dot = _mm256_sub_epi32(dot, _mm256_maskz_loadu_epi32(
            mask, c.corr + (c.rowclass[tile.oh] * c.o + oc) * c.wo + tile.ow0));
        if (c.extra) dot = _mm256_sub_epi32(dot, _mm256_maskz_loadu_epi32(mask, c.extra + at));
      }
      __m256 f = _mm256_cvtepi32_ps(dot);
      if (c.alpha) f = _mm256_mul_ps(f, _mm256_set1_ps(c.alpha[oc]));
      _mm256_mask_storeu_ps(c.out + at, mask, f);
    }
  }
}

// Per 64-bit lane, the number of set bits of v's bytes, as bytes (two nibble lookups).
__attribute__((target("avx2"))) inline __m256i byte_counts(__m256i v, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_add_epi8(lo, hi);
}

// Four ints, the lanes of mask only when the tile is partial.
__attribute__((target("avx2"))) inline __m128i load4(const int32_t* q, bool full, __m128i mask) {
  return full ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)) : _mm_maskload_epi32(q, mask);
}

template <int OB, int PV, bool MASKED>
__attribute__((target("avx2"))) void block_avx2(const Conv& c, int64_t b, int64_t o0,
                                                const Tile* tiles, int tn) {
  const uint64_t* in = c.in + b * c.sample;
  const uint64_t* nz = MASKED ? c.nz + b * c.sample : nullptr;
  const int64_t wstride = c.words * c.taps;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  __m256i acc[OB][PV], nonzero[PV];
  int64_t base[PV];
  for (int p = 0; p < PV; ++p) {
    base[p] = tiles[p < tn ? p : 0].base;
    nonzero[p] = zero;
  }
  for (int o = 0; o < OB; ++o)
    for (int p = 0; p < PV; ++p) acc[o][p] = zero;
  for (int64_t j = 0; j < c.words; ++j) {
    const uint64_t* src = in + j * c.plane;
    const uint64_t* wj = c.w + o0 * wstride + j * c.taps;
    const uint64_t* nl = c.nibbles + o0 * wstride + j * c.taps;       // weights & 0x0f..
    const uint64_t* nh = nl + c.nibble_plane;                         // (weights >> 4) & 0x0f..
    // Byte counts grow by at most 8 per tap: flush them to the 64-bit lanes every 31 taps.
    for (int64_t t0 = 0; t0 < c.taps; t0 += 31) {
      const int64_t t1 = std::min<int64_t>(c.taps, t0 + 31);
      __m256i bytes[OB][PV], nzbytes[PV];
      for (int p = 0; p < PV; ++p) {
        nzbytes[p] = zero;
        for (int o = 0; o < OB; ++o) bytes[o][p] = zero;
      }
      for (int64_t t = t0; t < t1; ++t) {
        __m256i x[PV], m[PV], xl[PV], xh[PV];
        const int64_t off = c.off[t];
        for (int p = 0; p < PV; ++p) {
          x[p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + base[p] + off));
          if (MASKED) {
            m[p] = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(nz + j * c.plane + base[p] + off));
            nzbytes[p] = _mm256_add_epi8(nzbytes[p], byte_counts(m[p], lut, low));
          } else {  // the input's nibbles, shared by the OB output channels
            xl[p] = _mm256_and_si256(x[p], low);
            xh[p] = _mm256_and_si256(_mm256_srli_epi16(x[p], 4), low);
          }
        }
        for (int o = 0; o < OB; ++o) {
          const int64_t at = o * wstride + t;
          if (MASKED) {
            const __m256i wv = _mm256_set1_epi64x(static_cast<long long>(wj[at]));
            for (int p = 0; p < PV; ++p) {
              const __m256i v = _mm256_and_si256(_mm256_xor_si256(x[p], wv), m[p]);
              bytes[o][p] = _mm256_add_epi8(bytes[o][p], byte_counts(v, lut, low));
            }
          } else {  // nibbles of x ^ w = nibbles of x ^ nibbles of w: six operations
            const __m256i wl = _mm256_set1_epi64x(static_cast<long long>(nl[at]));
            const __m256i wh = _mm256_set1_epi64x(static_cast<long long>(nh[at]));
            for (int p = 0; p < PV; ++p) {
              const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_xor_si256(xl[p], wl));
              const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_xor_si256(xh[p], wh));
              bytes[o][p] = _mm256_add_epi8(_mm256_add_epi8(bytes[o][p], lo), hi);
            }
          }
        }
      }
      for (int p = 0; p < PV; ++p) {
        if (MASKED) nonzero[p] = _mm256_add_epi64(nonzero[p], _mm256_sad_epu8(nzbytes[p], zero));
        for (int o = 0; o < OB; ++o)
          acc[o][p] = _mm256_add_epi64(acc[o][p], _mm256_sad_epu8(bytes[o][p], zero));
      }
    }
  }
  const __m128i k = _mm_set1_epi32(c.k_real);
  const __m256i evens = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  for (int p = 0; p < tn; ++p) {
    const Tile& tile = tiles[p];
    const __m128i mask = _mm_cmpgt_epi32(_mm_set1_epi32(tile.lanes), _mm_setr_epi32(0, 1, 2, 3));
    const __m128i nzc = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(nonzero[p], evens));
    for (int o = 0; o < OB && o0 + o < c.o; ++o) {
      const int64_t oc = o0 + o;
      const __m128i cnt = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(acc[o][p], evens));
      const int64_t at = ((b * c.o + oc) * c.ho + tile.oh) * c.wo + tile.ow0;
      __m128i dot;
      // Masked loads and stores only for a row's last, partial tile (they are slow on some
      // CPUs).
      const bool full = tile.lanes == 4;
      if (MASKED) {
        dot = _mm_sub_epi32(nzc, _mm_slli_epi32(cnt, 1));
      } else {
        dot = _mm_sub_epi32(k, _mm_slli_epi32(cnt, 1));
        dot = _mm_sub_epi32(dot, load4(c.corr + (c.rowclass[tile.oh] * c.o + oc) * c.wo + tile.ow0,
                                       full, mask));
        if (c.extra) dot = _mm_sub_epi32(dot, load4(c.extra + at, full, mask));
      }
      __m128 f = _mm_cvtepi32_ps(dot);
      if (c.alpha) f = _mm_mul_ps(f, _mm_set1_ps(c.alpha[oc]));
      if (full) _mm_storeu_ps(c.out + at, f);
      else _mm_maskstore_ps(c.out + at, mask, f);
    }
  }
}
#endif

using BlockFn = void (*)(const Conv&, int64_t, int64_t, const Tile*, int);

// Work items of (sample, block of PV tiles, group of output-channel blocks) on the OpenMP
// threads: each item computes its tiles' bases once and runs them through its group's blocks of
// OB output channels; groups are split finer only when there are too few tile blocks to keep
// every thread busy (small images at batch 1).
template <int V, int OB, int PV>
void conv_run(const Conv& c, int64_t n, int threads, BlockFn block) {
  const int64_t per_row = (c.wo + V - 1) / V, tiles = c.ho * per_row;
  const int64_t tblocks = (tiles + PV - 1) / PV, oblocks = (c.o + OB - 1) / OB;
  const int64_t want = 8 * static_cast<int64_t>(threads);
  const int64_t groups = std::min<int64_t>(oblocks, std::max<int64_t>(1, (want + n * tblocks - 1) /
                                                                            (n * tblocks)));
  const int64_t per_group = (oblocks + groups - 1) / groups;
  const int64_t total = n * tblocks * groups;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    const int64_t g = i % groups, tb = (i / groups) % tblocks, b = i / (groups * tblocks);
    Tile tile[PV];
    int tn = 0;
    for (int p = 0; p < PV && tb * PV + p < tiles; ++p, ++tn) {
      const int64_t t = tb * PV + p, oh = t / per_row, ow0 = (t % per_row) * V;
      tile[p] = {(c.oy + oh * c.s) * c.wrow + ow0, oh, ow0,
                 static_cast<int>(std::min<int64_t>(V, c.wo - ow0))};
    }
    const int64_t last = std::min(oblocks, (g + 1) * per_group);
    for (int64_t ob = g * per_group; ob < last; ++ob) block(c, b, ob * OB, tile, tn);
  }
}

enum Isa { PORTABLE = 0, AVX2 = 1, AVX512 = 2 };

}  // namespace

extern "C" {

// Bit i set when path i (PORTABLE, AVX2, AVX512 with VPOPCNTDQ) can run on this CPU.
int bnas_xnor_isas() {
  int isas = 1 << PORTABLE;
#if BNAS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) isas |= 1 << AVX2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vpopcntdq"))
    isas |= 1 << AVX512;
#endif
  return isas;
}

// Pack x (n x c x h x w float32) into out (n x words x hp x wrow, zero-initialised by the
// caller): see struct Pack. Returns nothing; *zcount is the number of sign(0) found (the first
// zcap of their flat indices are in zeros).
void bnas_xnor_pack(const float* x, int64_t n, int64_t c, int64_t h, int64_t w,
                    const float* scale, const float* shift, const float* thresh, int fma,
                    int zero_is_zero, int64_t pt, int64_t pl, int64_t hp, int64_t wrow,
                    int64_t wc, int64_t s, uint64_t* out, uint64_t* nz, int64_t* zeros,
                    int64_t zcap, int64_t* zcount, int isa, int threads) {
  *zcount = 0;
  const Pack p{x, n, c, h, w, scale, shift, thresh, fma, zero_is_zero, pt, pl, hp, wrow, wc, s,
               out, nz, zeros, zcap, zcount};
#if BNAS_X86
  if (isa == AVX512) return pack_all(p, threads, row_avx512);
  if (isa == AVX2) return pack_all(p, threads, row_avx2);
#endif
  pack_all(p, threads, row_portable);
}

// z = x * scale + shift per channel as the packing computes it (for the probe against torch).
void bnas_xnor_affine(const float* x, int64_t n, int64_t c, int64_t hw, const float* scale,
                      const float* shift, int fma, float* out) {
  for (int64_t i = 0; i < n * c * hw; ++i) {
    const int64_t ch = (i / hw) % c;
    out[i] = affine(x[i], scale[ch], shift[ch], fma != 0);
  }
}

// torch's eval BatchNorm terms: scale = gamma / sqrt(var + eps) (as 1 / sqrt then a product),
// shift = beta - mean * scale, the product-difference fused when fma (gamma, beta nullable).
void bnas_xnor_bn_terms(const float* mean, const float* var, const float* gamma,
                        const float* beta, int64_t c, double eps, int fma, float* scale,
                        float* shift) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const float invstd = 1.0f / std::sqrt(var[ch] + static_cast<float>(eps));
    scale[ch] = invstd * (gamma ? gamma[ch] : 1.0f);
    const float b = beta ? beta[ch] : 0.0f;
    shift[ch] = fma ? std::fma(-mean[ch], scale[ch], b) : b - mean[ch] * scale[ch];
  }
}

// The binary convolution (struct Conv; nz: the masked mode's nonzero bits or null; geometry in g: n, words, hp, wrow, wc, s, o, kh, kw, d,
// oy, ox, ho, wo, k_real).
void bnas_xnor_conv(const uint64_t* in, const uint64_t* nz, const int64_t* g,
                    const uint64_t* weights, const uint64_t* nibbles,
                    const int32_t* rowclass, const int32_t* corr, const int32_t* extra,
                    const float* alpha, float* out, int isa, int threads) {
  const int64_t n = g[0], words = g[1], hp = g[2], wrow = g[3], wc = g[4], s = g[5], o = g[6],
                kh = g[7], kw = g[8], d = g[9], oy = g[10], ox = g[11], ho = g[12], wo = g[13];
  std::vector<int64_t> off(kh * kw);
  for (int64_t i = 0; i < kh; ++i)
    for (int64_t j = 0; j < kw; ++j) {
      const int64_t col = ox + j * d;
      off[i * kw + j] = i * d * wrow + (col % s) * wc + col / s;
    }
  const int64_t o_pad = (o + 7) / 8 * 8;
  const Conv c{in, nz, hp * wrow, words * hp * wrow, wrow, s, weights, nibbles,
               o_pad * words * kh * kw, words, kh * kw, o,
               off.data(), oy, ho, wo, static_cast<int32_t>(g[14]), rowclass, corr, extra,
               alpha, out};
#if BNAS_X86
  if (isa == AVX512)
    return conv_run<8, 8, 3>(c, n, threads, nz ? block_avx512<8, 3, true> : block_avx512<8, 3, false>);
  if (isa == AVX2)
    return conv_run<4, 4, 2>(c, n, threads, nz ? block_avx2<4, 2, true> : block_avx2<4, 2, false>);
#endif
  conv_run<4, 4, 1>(c, n, threads, nz ? block_portable<4, 1, true> : block_portable<4, 1, false>);
}

// extra[b, o, oh, ow] += w_b[o, ch, i, j] for every recorded sign(0) at (b, ch, y, x) and
// every tap (i, j) through which output (oh, ow) reads it (padded coordinates y + pt, x + pl).
void bnas_xnor_zero_fix(const int64_t* zeros, int64_t count, const int64_t* g, int64_t c,
                        int64_t h, int64_t w, int64_t pt, int64_t pl, const uint64_t* weights,
                        int32_t* extra) {
  const int64_t words = g[1], s = g[5], o = g[6], kh = g[7], kw = g[8], d = g[9], oy = g[10],
                ox = g[11], ho = g[12], wo = g[13], taps = kh * kw;
  for (int64_t z = 0; z < count; ++z) {
    const int64_t idx = zeros[z], xx = idx % w, y = (idx / w) % h, ch = (idx / (w * h)) % c,
                  b = idx / (w * h * c);
    for (int64_t i = 0; i < kh; ++i) {
      const int64_t r = y + pt - oy - i * d;
      if (r < 0 || r % s || r / s >= ho) continue;
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t q = xx + pl - ox - j * d;
        if (q < 0 || q % s || q / s >= wo) continue;
        for (int64_t oc = 0; oc < o; ++oc) {
          const uint64_t word = weights[(oc * words + ch / 64) * taps + i * kw + j];
          extra[((b * o + oc) * ho + r / s) * wo + q / s] += 1 - 2 * int32_t((word >> (ch % 64)) & 1);
        }
      }
    }
  }
}

}  // extern "C"

// ---------------------------------------------------------------------------------------------
// Network level (bnas.deploy.layers): a whole binary operation in one call. At batch 1 a small
// network's binary convolutions take tens of microseconds each, so what surrounds the kernels
// (allocating and zeroing the packed input, a call each for packing, corrections and
// convolution, the ReLU after it) costs as much as they do; here it is one call from Python,
// through the entry points above, on a packed input that lives in a buffer of the calling thread
// reused from call to call.
namespace {

// What stays fixed for one convolution and one input size: bnas.deploy.kernels.RECORD names the
// fields, in this order (pointers stored as 64-bit integers).
enum Field {
  F_N, F_C, F_H, F_W, F_PT, F_PL, F_HP, F_WROW, F_WC, F_S, F_O, F_HO, F_WO, F_FMA, F_ZERO_IS_ZERO,
  F_MASKED, F_GEOMETRY, F_WEIGHTS, F_NIBBLES, F_ROWCLASS, F_CORR, F_ALPHA, F_BIAS, F_FIELDS
};

template <typename T>
T* field_ptr(const int64_t* r, Field f) {
  return reinterpret_cast<T*>(static_cast<intptr_t>(r[f]));
}

// The calling thread's buffers (an inference may run on several Python threads at once).
struct Scratch {
  std::vector<uint64_t> words, nonzero;
  std::vector<int64_t> zeros;
  std::vector<int32_t> extra;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Packs x for record r into s (masked or not): the number of signs 0 found (their flat indices
// in s.zeros when unmasked; the buffer grows until it holds them all).
int64_t pack_into(Scratch& s, const int64_t* r, const float* x, const float* scale,
                  const float* shift, const float* thresh, bool masked, int isa, int threads) {
  const int64_t size = r[F_N] * ((r[F_C] + 63) / 64) * r[F_HP] * r[F_WROW] + 8;  // + SLACK
  s.words.assign(size, 0);
  if (masked) s.nonzero.assign(size, 0);
  if (s.zeros.size() < 64) s.zeros.resize(64);
  for (;;) {
    int64_t count = 0;
    bnas_xnor_pack(x, r[F_N], r[F_C], r[F_H], r[F_W], scale, shift, thresh,
                   static_cast<int>(r[F_FMA]), static_cast<int>(r[F_ZERO_IS_ZERO]), r[F_PT],
                   r[F_PL], r[F_HP], r[F_WROW], r[F_WC], r[F_S], s.words.data(),
                   masked ? s.nonzero.data() : nullptr, s.zeros.data(),
                   static_cast<int64_t>(s.zeros.size()), &count, isa, threads);
    if (masked || count <= static_cast<int64_t>(s.zeros.size())) return count;
    s.zeros.resize(count);
    std::fill(s.words.begin(), s.words.end(), 0);
  }
}

}  // namespace

extern "C" {

// out = relu?(conv(b(x), sign W) * alpha + bias) for record r (see enum Field), x packed with
// the BatchNorm terms and threshold given (each nullable). An unmasked record whose input has
// more than 1 in masked_above signs 0 is run in the masked mode and set to it for good
// (r[F_MASKED] = 1), as bnas.deploy.kernels.BinaryConvPlan decides: returns 1 then, else 0.
int bnas_xnor_binconv(int64_t* r, const float* x, const float* scale, const float* shift,
                      const float* thresh, int relu, int64_t masked_above, float* out, int isa,
                      int threads) {
  Scratch& s = scratch();
  bool masked = r[F_MASKED] != 0;
  int switched = 0;
  const int64_t count = pack_into(s, r, x, scale, shift, thresh, masked, isa, threads);
  const int64_t inputs = r[F_N] * r[F_C] * r[F_H] * r[F_W];
  if (!masked && count * masked_above > inputs) {
    r[F_MASKED] = 1;
    masked = switched = 1;
    pack_into(s, r, x, scale, shift, thresh, true, isa, threads);
  }
  const int64_t* g = field_ptr<const int64_t>(r, F_GEOMETRY);
  const uint64_t* weights = field_ptr<const uint64_t>(r, F_WEIGHTS);
  const int64_t outputs = r[F_N] * r[F_O] * r[F_HO] * r[F_WO];
  const int32_t* extra = nullptr;
  if (!masked && count > 0) {
    s.extra.assign(outputs, 0);
    bnas_xnor_zero_fix(s.zeros.data(), count, g, r[F_C], r[F_H], r[F_W], r[F_PT], r[F_PL],
                       weights, s.extra.data());
    extra = s.extra.data();
  }
  bnas_xnor_conv(s.words.data(), masked ? s.nonzero.data() : nullptr, g, weights,
                 field_ptr<const uint64_t>(r, F_NIBBLES), field_ptr<const int32_t>(r, F_ROWCLASS),
                 field_ptr<const int32_t>(r, F_CORR), extra, field_ptr<const float>(r, F_ALPHA),
                 out, isa, threads);
  const float* bias = field_ptr<const float>(r, F_BIAS);
  if (!bias && !relu) return switched;
  const int64_t plane = r[F_HO] * r[F_WO], planes = r[F_N] * r[F_O];
#pragma omp parallel for num_threads(threads) schedule(static) if (outputs > (1 << 16))
  for (int64_t i = 0; i < planes; ++i) {  // as torch: y + bias, then relu (NaN kept)
    float* y = out + i * plane;
    const float b = bias ? bias[i % r[F_O]] : 0.0f;
    for (int64_t q = 0; q < plane; ++q) {
      const float v = bias ? y[q] + b : y[q];
      y[q] = relu && v < 0.0f ? 0.0f : v;
    }
  }
  return switched;
}

}  // extern "C"
