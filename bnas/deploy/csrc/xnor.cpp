// Bit-packed XNOR / popcount kernels of bnas's inference engine (bnas.deploy).
//
// A binary convolution of the float model computes, per output channel o and position q,
// alpha[o] * sum_k x_b[k] * w_b[o, k] with x_b in {-1, 0, +1} (0: zero padding and sign(0))
// and w_b in {-1, +1} (0 rarely, see below). Here the +-1 values are bits (+1 -> 0, -1 -> 1),
// 64 input channels to a 64-bit word, and for two +-1 values x * w = 1 - 2 * (bit(x) XOR
// bit(w)), so over the taps
//   dot = K_real - 2 * popcount(bits(x) XOR bits(w))        (K_real: the real taps only)
// Channels past C_in in the last word carry bit 0 in input and weight (XOR 0, adds nothing).
// Padded positions are packed as +1 (bit 0); the popcount then counts +1 * w_b there, which the
// caller's per-border-class table subtracts (`corr`, in `table`), and an interior zero
// (sign(0) = 0 of the float model) is packed as +1 too and its taps' weights subtracted per
// output (`extra`).
// Inputs with many zeros (a ReLU's output) take the masked mode instead: a second bit plane
// marks the nonzero inputs (padding and zeros 0) and dot = popcount(m) - 2 * popcount((x^w) & m).
// A binary weight exactly 0 (torch.sign of a latent 0) is packed as +1 and what it added, the
// input its tap reads, subtracted per output (`extra` again, bnas_xnor_zero_weights).
// The result, an exact integer, is multiplied by alpha[o] once: the float model's
// conv(sign(x), sign(W)) * alpha.
//
// Layouts. Float tensors are contiguous NCHW (as the float model keeps them). A packed input is
// n x words x hp x wrow 64-bit words: word j of a pixel holds channels 64j..64j+63; rows carry
// the zero padding; for a consumer of stride s a row's columns are split in s phases
// (column c at (c % s) * wc + c / s, wc = ceil(wp / s)), so that the inputs of consecutive
// outputs are consecutive words whatever the stride and dilation. Weights come as
// O_pad x words x taps words (O_pad a multiple of 8, extra rows zero) and are laid out for each
// path's register blocks by bnas_xnor_weights.
//
// Paths, chosen at run time by the caller (bnas.deploy.kernels): AVX-512 with VPOPCNTDQ
// (8 output positions in the 64-bit lanes of a zmm register, 8 output channels x 3 such vectors
// of accumulators), AVX2 (4 positions per ymm, 4 output channels x 2 such vectors; popcount by
// two nibble lookups per byte, bytes summed per lane with vpsadbw) and portable C++; and AMX
// (see its section below), which is the AVX-512 path with the convolutions of few input channels
// run as int8 tile products. Each path is compiled for its instruction set with function target
// attributes only: the library itself assumes the x86-64 (or any) base ISA, and nothing runs an
// instruction the CPU check did not find.
//
// Every kernel runs on `threads` OpenMP threads (libgomp: the runtime torch has loaded).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <omp.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BNAS_X86 1
#else
#define BNAS_X86 0
#endif

// AMX needs Linux's permission for the tile state (arch_prctl) and a compiler with its
// intrinsics (GCC 11, Clang 12).
#if BNAS_X86 && defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define BNAS_AMX 1
#else
#define BNAS_AMX 0
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

// Where column c of a padded row lies in a packed row of stride s's phases (wc per phase).
inline int64_t packed_column(int64_t c, int64_t s, int64_t wc) { return (c % s) * wc + c / s; }

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

// One row of one word plane, every path: segments of T::PIX pixels, whose sign and nonzero words
// (T::Planes) collect, channel after channel, the channel's bit from T::group, which compares 8
// pixels (those past the row's end compare as t: neither sign nor zero kept) and says which of
// them are signs 0. T's members carry their path's instruction set (function target attributes)
// and are inlined into the path's row function, which has it too.
template <class T, bool BN, bool FMA>
__attribute__((always_inline)) inline void pack_row(const Pack& p, int64_t b, int64_t j,
                                                    int64_t y) {
  const int64_t chans = std::min<int64_t>(64, p.c - 64 * j);
  const float t = p.thresh ? p.thresh[b] : 0.0f;
  const int64_t at = ((b * ((p.c + 63) / 64) + j) * p.hp + y + p.pt) * p.wrow;
  alignas(64) uint64_t acc[T::PIX], nonzero[T::PIX];
  for (int64_t x0 = 0; x0 < p.w; x0 += T::PIX) {
    const int64_t len = std::min<int64_t>(T::PIX, p.w - x0);
    const int groups = static_cast<int>((len + 7) / 8);
    typename T::Planes planes;
    T::clear(planes);
    unsigned anyzero = 0;
    for (int64_t cc = 0; cc < chans; ++cc) {
      const int64_t ch = 64 * j + cc;
      const float* src = p.x + ((b * p.c + ch) * p.h + y) * p.w + x0;
      const float a = BN ? p.scale[ch] : 1.0f, sh = BN ? p.shift[ch] : 0.0f;
      for (int g = 0; g < groups; ++g)
        anyzero |= T::template group<BN, FMA>(planes, g, src + 8 * g, len - 8 * g, a, sh, t,
                                              static_cast<int>(cc), p.zero_is_zero);
    }
    T::store(planes, acc, nonzero);
    if (anyzero && p.zero_is_zero && !p.nz) record_zeros<BN, FMA>(p, b, j, y, x0, len, t);
    store_row(p, at, x0, len, acc, nonzero);
  }
}

// The row function of path T, with the BatchNorm variant chosen.
template <class T>
__attribute__((always_inline)) inline void pack_row_any(const Pack& p, int64_t b, int64_t j,
                                                        int64_t y) {
  if (!p.scale) pack_row<T, false, false>(p, b, j, y);
  else if (p.fma) pack_row<T, true, true>(p, b, j, y);
  else pack_row<T, true, false>(p, b, j, y);
}

// Portable: the words of 64 pixels in memory, a bit at a time.
struct PortableRows {
  static constexpr int PIX = 64;
  struct Planes {
    uint64_t a[PIX], m[PIX];
  };
  static void clear(Planes& q) {
    for (int i = 0; i < PIX; ++i) q.a[i] = q.m[i] = 0;
  }
  template <bool BN, bool FMA>
  static unsigned group(Planes& q, int g, const float* src, int64_t left, float a, float sh,
                        float t, int cc, int zero_is_zero) {
    unsigned zeros = 0;
    for (int i = 0; i < 8 && i < left; ++i) {
      const float z = BN ? affine(src[i], a, sh, FMA) : src[i];
      q.a[8 * g + i] |= uint64_t(z < t) << cc;
      q.m[8 * g + i] |= uint64_t(z != t || !zero_is_zero) << cc;
      zeros |= unsigned(z == t) << i;
    }
    return zeros;
  }
  static void store(const Planes& q, uint64_t* acc, uint64_t* nonzero) {
    for (int i = 0; i < PIX; ++i) {
      acc[i] = q.a[i];
      nonzero[i] = q.m[i];
    }
  }
};

using RowFn = void (*)(const Pack&, int64_t, int64_t, int64_t);
void row_portable(const Pack& p, int64_t b, int64_t j, int64_t y) {
  pack_row_any<PortableRows>(p, b, j, y);
}

#if BNAS_X86
// affine() on the 8 pixels of a group (the AVX2 and AVX-512 rows both compare 8 at a time).
template <bool FMA>
__attribute__((target("avx2,fma"), always_inline)) inline __m256 affine8(__m256 z, float a,
                                                                         float sh) {
  const __m256 sc = _mm256_set1_ps(a), sv = _mm256_set1_ps(sh);
  return FMA ? _mm256_fmadd_ps(z, sc, sv) : _mm256_add_ps(_mm256_mul_ps(z, sc), sv);
}

// AVX2: 32 pixels in 8 registers of 4 sign words and 8 of nonzero words; per group of 8 pixels
// one compare, each half of whose lanes, widened to 64 bits, selects the channel's bit.
struct Avx2Rows {
  static constexpr int PIX = 32;
  struct Planes {
    __m256i a[8], m[8];
  };
  __attribute__((target("avx2,fma"))) static void clear(Planes& q) {
    for (int v = 0; v < 8; ++v) q.a[v] = q.m[v] = _mm256_setzero_si256();
  }
  template <bool BN, bool FMA>
  __attribute__((target("avx2,fma"))) static unsigned group(Planes& q, int g, const float* src,
                                                             int64_t left, float a, float sh,
                                                             float t, int cc, int zero_is_zero) {
    const __m256 tv = _mm256_set1_ps(t);
    const int lanes = static_cast<int>(std::min<int64_t>(left, 8));
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 z = left >= 8 ? _mm256_loadu_ps(src) : _mm256_maskload_ps(src, live);
    if (BN) z = affine8<FMA>(z, a, sh);
    if (left < 8) z = _mm256_blendv_ps(tv, z, _mm256_castsi256_ps(live));
    const __m256i lt = _mm256_castps_si256(_mm256_cmp_ps(z, tv, _CMP_LT_OQ));
    const __m256i ne = zero_is_zero ? _mm256_castps_si256(_mm256_cmp_ps(z, tv, _CMP_NEQ_UQ))
                                    : live;
    const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(uint64_t(1) << cc));
    for (int half = 0; half < 2; ++half) {
      const __m256i l = _mm256_cvtepi32_epi64(half ? _mm256_extracti128_si256(lt, 1)
                                                   : _mm256_castsi256_si128(lt));
      const __m256i n = _mm256_cvtepi32_epi64(half ? _mm256_extracti128_si256(ne, 1)
                                                   : _mm256_castsi256_si128(ne));
      q.a[2 * g + half] = _mm256_or_si256(q.a[2 * g + half], _mm256_and_si256(l, bit));
      q.m[2 * g + half] = _mm256_or_si256(q.m[2 * g + half], _mm256_and_si256(n, bit));
    }
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(
        _mm256_andnot_si256(ne, live))));
  }
  __attribute__((target("avx2,fma"))) static void store(const Planes& q, uint64_t* acc,
                                                        uint64_t* nonzero) {
    for (int v = 0; v < 8; ++v) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(acc + 4 * v), q.a[v]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(nonzero + 4 * v), q.m[v]);
    }
  }
};

// AVX-512: 64 pixels in 8 registers of 8 sign words and 8 of nonzero words; per group of 8
// pixels one compare into a mask register, which sets the channel's bit in the group's lanes.
struct Avx512Rows {
  static constexpr int PIX = 64;
  struct Planes {
    __m512i a[8], m[8];
  };
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma"))) static void clear(Planes& q) {
    for (int v = 0; v < 8; ++v) q.a[v] = q.m[v] = _mm512_setzero_si512();
  }
  template <bool BN, bool FMA>
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma")))
  static unsigned group(Planes& q, int g, const float* src, int64_t left, float a, float sh,
                        float t, int cc, int zero_is_zero) {
    const __m256 tv = _mm256_set1_ps(t);
    const __mmask8 live = left >= 8 ? 0xff : static_cast<__mmask8>((1u << left) - 1u);
    __m256 z = _mm256_maskz_loadu_ps(live, src);
    if (BN) z = affine8<FMA>(z, a, sh);
    const __mmask8 lt = _mm256_mask_cmp_ps_mask(live, z, tv, _CMP_LT_OQ);
    const __mmask8 ne = zero_is_zero ? _mm256_mask_cmp_ps_mask(live, z, tv, _CMP_NEQ_UQ) : live;
    const __m512i bit = _mm512_set1_epi64(static_cast<long long>(uint64_t(1) << cc));
    q.a[g] = _mm512_mask_or_epi64(q.a[g], lt, q.a[g], bit);
    q.m[g] = _mm512_mask_or_epi64(q.m[g], ne, q.m[g], bit);
    return static_cast<unsigned>(live & ~ne);
  }
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma")))
  static void store(const Planes& q, uint64_t* acc, uint64_t* nonzero) {
    for (int v = 0; v < 8; ++v) {
      _mm512_store_si512(acc + 8 * v, q.a[v]);
      _mm512_store_si512(nonzero + 8 * v, q.m[v]);
    }
  }
};

__attribute__((target("avx2,fma"))) void row_avx2(const Pack& p, int64_t b, int64_t j,
                                                  int64_t y) {
  pack_row_any<Avx2Rows>(p, b, j, y);
}

__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma")))
void row_avx512(const Pack& p, int64_t b, int64_t j, int64_t y) {
  pack_row_any<Avx512Rows>(p, b, j, y);
}
#endif

void pack_all(const Pack& p, int threads, RowFn row) {
  const int64_t words = (p.c + 63) / 64, rows = p.n * words * p.h;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) row(p, r / (words * p.h), (r / p.h) % words, r % p.h);
}

// ---------------------------------------------------------------------------------------------
// Convolution on packed inputs. The sum runs over steps f = j * taps + t (input word j, tap t;
// `off[f]`: the word's offset from a tile's base). Output positions are taken in tiles of V
// consecutive columns of one output row (the lanes of one vector register); a block is PV tiles
// x OB output channels of accumulators, so that each loaded input word serves OB channels and
// each weight PV tiles.
//
// Two ways to the integer sum. Unmasked: dot = table - 2 * popcount(x ^ w) - extra over the
// steps, table = k_real - corr (k_real = C_in * taps; corr: the padded taps' weights, read as +1
// and subtracted, per border class, output channel and column; extra: the sign(0) corrections,
// per output, or none). Masked (inputs with many zeros): each input bit has a nonzero bit m
// (padding and zeros 0), and dot = popcount(m) - 2 * popcount((x ^ w) & m) - extra.
enum Isa { PORTABLE = 0, AVX2 = 1, AVX512 = 2, AMX = 3 };

// The register blocks of each path. The weights are laid out per path (bnas_xnor_weights) in
// blocks of OB output channels, a block's weights of one step contiguous: OB words (AVX-512,
// portable) or OB pairs of the words' low and high nibbles (AVX2: the operands of its lookups).
constexpr int AVX512_OB = 8, AVX512_PV = 3, AVX2_OB = 4, AVX2_PV = 2, PORTABLE_OB = 4;

struct WeightLayout {
  int ob, parts;
};

WeightLayout weight_layout(int isa) {
  if (isa >= AVX512) return {AVX512_OB, 1};
  if (isa == AVX2) return {AVX2_OB, 2};
  return {PORTABLE_OB, 1};
}

struct Conv {
  const uint64_t* in;
  const uint64_t* nz;  // or null; the masked mode: a product counts where the input bit is set
  int64_t sample;      // words per sample of the packed input
  const uint64_t* w;   // the path's weight layout
  int64_t steps, o;
  const int64_t* off;
  int64_t oy, s, wrow, ho, wo;
  const int32_t* rowclass;  // per output row: its border class
  const int32_t* table;     // classes x o x wo (see above)
  const int32_t* extra;     // n x o x ho x wo, or null
  const float* alpha;       // per output channel, or null
  float* out;
};

struct Tile {
  int64_t base;  // word offset of the tile's first input in a sample's packed input
  int64_t oh, ow0;
  int lanes;
};

// Tiles p and p + 1 are full and side by side in one output row: one 2V-wide epilogue.
inline bool adjacent(const Tile* tiles, int tn, int p, int v) {
  return p + 1 < tn && tiles[p].lanes == v && tiles[p + 1].lanes == v &&
         tiles[p + 1].oh == tiles[p].oh && tiles[p + 1].ow0 == tiles[p].ow0 + v;
}

// Where a block's results for one tile go: output channel o0 + o (o < count) at out + o *
// plane, its border table row at table + o * wo, its corrections at extra + o * plane (or none).
struct Dest {
  float* out;
  const int32_t* table;
  const int32_t* extra;
  const float* alpha;
  int64_t plane, wo;
  int count;
};

inline Dest dest(const Conv& c, int64_t b, int64_t o0, int ob, const Tile& tile) {
  const int64_t plane = c.ho * c.wo, at = (b * c.o + o0) * plane + tile.oh * c.wo + tile.ow0;
  return {c.out + at, c.table + (c.rowclass[tile.oh] * c.o + o0) * c.wo + tile.ow0,
          c.extra ? c.extra + at : nullptr, c.alpha ? c.alpha + o0 : nullptr, plane, c.wo,
          static_cast<int>(std::min<int64_t>(ob, c.o - o0))};
}

template <int OB, int PV, bool MASKED>
void block_portable(const Conv& c, int64_t b, int64_t ob, const Tile* tiles, int tn) {
  const uint64_t* in = c.in + b * c.sample;
  const uint64_t* nz = MASKED ? c.nz + b * c.sample : nullptr;
  const uint64_t* wb = c.w + ob * c.steps * OB;
  for (int p = 0; p < tn; ++p) {
    const Tile& tile = tiles[p];
    for (int l = 0; l < tile.lanes; ++l) {
      int64_t cnt[OB] = {}, nonzero = 0;
      for (int64_t f = 0; f < c.steps; ++f) {
        const int64_t at = tile.base + l + c.off[f];
        const uint64_t v = in[at];
        if (MASKED) nonzero += __builtin_popcountll(nz[at]);
        for (int o = 0; o < OB; ++o) {
          const uint64_t x = v ^ wb[f * OB + o];
          cnt[o] += __builtin_popcountll(MASKED ? x & nz[at] : x);
        }
      }
      const int64_t ow = tile.ow0 + l;
      for (int o = 0; o < OB && ob * OB + o < c.o; ++o) {
        const int64_t oc = ob * OB + o, at = ((b * c.o + oc) * c.ho + tile.oh) * c.wo + ow;
        int32_t dot = (MASKED ? static_cast<int32_t>(nonzero)
                              : c.table[(c.rowclass[tile.oh] * c.o + oc) * c.wo + ow]) -
                      2 * static_cast<int32_t>(cnt[o]);
        if (c.extra) dot -= c.extra[at];
        const float f = static_cast<float>(dot);
        c.out[at] = c.alpha ? f * c.alpha[oc] : f;
      }
    }
  }
}

#if BNAS_X86
// The epilogue of the AVX-512 blocks for `lanes` outputs from tile P (up to 8 lanes) or tiles
// P and Q (16): the counts' 64-bit lanes as 32-bit ones, to the output.
template <int OB, bool MASKED, int P, int Q, int PV>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"))) inline void finish_avx512(
    const Conv& c, int64_t b, int64_t ob, const Tile& tile, int lanes,
    const __m512i (&acc)[OB][PV], const __m512i (&nonzero)[PV]) {
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                          28, 30);
  const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1u);
  const __m512i nzc = MASKED ? _mm512_permutex2var_epi32(nonzero[P], evens, nonzero[Q])
                             : _mm512_setzero_si512();
  const Dest d = dest(c, b, ob * OB, OB, tile);
  for (int o = 0; o < OB && o < d.count; ++o) {
    const __m512i cnt = _mm512_permutex2var_epi32(acc[o][P], evens, acc[o][Q]);
    const __m512i base = MASKED ? nzc : _mm512_maskz_loadu_epi32(mask, d.table + o * d.wo);
    __m512i dot = _mm512_sub_epi32(base, _mm512_add_epi32(cnt, cnt));
    if (d.extra)
      dot = _mm512_sub_epi32(dot, _mm512_maskz_loadu_epi32(mask, d.extra + o * d.plane));
    __m512 f = _mm512_cvtepi32_ps(dot);
    if (d.alpha) f = _mm512_mul_ps(f, _mm512_set1_ps(d.alpha[o]));
    _mm512_mask_storeu_ps(d.out + o * d.plane, mask, f);
  }
}

// The epilogues of a block's tiles from tile P on: one per tile, or per two adjacent ones (16
// outputs), the tiles' indices known at compile time: 5-7% faster than a loop over them on 64
// input channels (9 steps, where the epilogue weighs most).
template <int OB, bool MASKED, int P, int PV>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"))) inline void finish_tiles(
    const Conv& c, int64_t b, int64_t ob, const Tile* tiles, int tn,
    const __m512i (&acc)[OB][PV], const __m512i (&nonzero)[PV]) {
  if constexpr (P < PV) {
    if (P >= tn) return;
    if constexpr (P + 1 < PV) {
      if (adjacent(tiles, tn, P, 8)) {
        finish_avx512<OB, MASKED, P, P + 1>(c, b, ob, tiles[P], 16, acc, nonzero);
        return finish_tiles<OB, MASKED, P + 2, PV>(c, b, ob, tiles, tn, acc, nonzero);
      }
    }
    finish_avx512<OB, MASKED, P, P>(c, b, ob, tiles[P], tiles[P].lanes, acc, nonzero);
    finish_tiles<OB, MASKED, P + 1, PV>(c, b, ob, tiles, tn, acc, nonzero);
  }
}

template <int OB, int PV, bool MASKED>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512vpopcntdq")))
void block_avx512(const Conv& c, int64_t b, int64_t ob, const Tile* tiles, int tn) {
  const uint64_t* src[PV];
  const uint64_t* msk[PV];
  for (int p = 0; p < PV; ++p) {
    src[p] = c.in + b * c.sample + tiles[p < tn ? p : 0].base;
    msk[p] = MASKED ? c.nz + (src[p] - c.in) : nullptr;
  }
  __m512i acc[OB][PV], nonzero[PV];
  for (int p = 0; p < PV; ++p) {
    nonzero[p] = _mm512_setzero_si512();
    for (int o = 0; o < OB; ++o) acc[o][p] = _mm512_setzero_si512();
  }
  const uint64_t* wf = c.w + ob * c.steps * OB;
  for (int64_t f = 0; f < c.steps; ++f, wf += OB) {
    __m512i x[PV], m[PV];
    const int64_t off = c.off[f];
    for (int p = 0; p < PV; ++p) {
      x[p] = _mm512_loadu_si512(src[p] + off);
      if (MASKED) {
        m[p] = _mm512_loadu_si512(msk[p] + off);
        nonzero[p] = _mm512_add_epi64(nonzero[p], _mm512_popcnt_epi64(m[p]));
      }
    }
    for (int o = 0; o < OB; ++o) {
      const __m512i wv = _mm512_set1_epi64(static_cast<long long>(wf[o]));
      for (int p = 0; p < PV; ++p) {
        // (x ^ w) & m in one ternary-logic instruction (truth table 0x28)
        const __m512i v = MASKED ? _mm512_ternarylogic_epi64(x[p], wv, m[p], 0x28)
                                 : _mm512_xor_si512(x[p], wv);
        acc[o][p] = _mm512_add_epi64(acc[o][p], _mm512_popcnt_epi64(v));
      }
    }
  }
  finish_tiles<OB, MASKED, 0, PV>(c, b, ob, tiles, tn, acc, nonzero);
}


// An empty barrier: v is in a register here. Keeps the compiler from reassociating the
// accumulation (which holds more registers live than there are and spills them).
__attribute__((target("avx2"))) inline void keep(__m256i& v) { asm("" : "+x"(v)); }

// The per-lane sums of two tiles' vectors (64-bit lanes below 2^31) as eight 32-bit lanes.
__attribute__((target("avx2"))) inline __m256i lanes8(__m256i a, __m256i b) {
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  return _mm256_permutevar8x32_epi32(
      _mm256_blend_epi32(a, _mm256_slli_epi64(b, 32), 0xaa), order);
}

// The epilogue of the AVX2 blocks: sums[o][p] (and nonzero[p], masked) per 64-bit lane to the
// output, two adjacent tiles at a time where they can. A partial tile uses masked loads and
// stores (slow on some CPUs, so only there).
template <int OB, int PV, bool MASKED>
__attribute__((target("avx2"))) inline void finish_avx2(const Conv& c, int64_t b, int64_t ob,
                                                        const Tile* tiles, int tn,
                                                        const __m256i (&sums)[OB][PV],
                                                        const __m256i (&nonzero)[PV]) {
  for (int p = 0; p < PV; ++p) {
    if (p >= tn) break;
    const Dest d = dest(c, b, ob * OB, OB, tiles[p]);
    if (p + 1 < PV && adjacent(tiles, tn, p, 4)) {
      const __m256i nzc = MASKED ? lanes8(nonzero[p], nonzero[p + 1]) : __m256i{};
      for (int o = 0; o < OB && o < d.count; ++o) {
        const __m256i cnt = lanes8(sums[o][p], sums[o][p + 1]);
        const __m256i base = MASKED ? nzc : _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(d.table + o * d.wo));
        __m256i dot = _mm256_sub_epi32(base, _mm256_add_epi32(cnt, cnt));
        if (d.extra)
          dot = _mm256_sub_epi32(dot, _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(d.extra + o * d.plane)));
        __m256 f = _mm256_cvtepi32_ps(dot);
        if (d.alpha) f = _mm256_mul_ps(f, _mm256_set1_ps(d.alpha[o]));
        _mm256_storeu_ps(d.out + o * d.plane, f);
      }
      ++p;
      continue;
    }
    const int lanes = tiles[p].lanes;
    const bool full = lanes == 4;
    const __m128i mask = _mm_cmpgt_epi32(_mm_set1_epi32(lanes), _mm_setr_epi32(0, 1, 2, 3));
    auto load4 = [&](const int32_t* q) __attribute__((target("avx2"))) {
      return full ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(q))
                  : _mm_maskload_epi32(q, mask);
    };
    const __m128i nzc = MASKED ? _mm256_castsi256_si128(lanes8(nonzero[p], nonzero[p]))
                               : __m128i{};
    for (int o = 0; o < OB && o < d.count; ++o) {
      const __m128i cnt = _mm256_castsi256_si128(lanes8(sums[o][p], sums[o][p]));
      const __m128i base = MASKED ? nzc : load4(d.table + o * d.wo);
      __m128i dot = _mm_sub_epi32(base, _mm_add_epi32(cnt, cnt));
      if (d.extra) dot = _mm_sub_epi32(dot, load4(d.extra + o * d.plane));
      __m128 f = _mm_cvtepi32_ps(dot);
      if (d.alpha) f = _mm_mul_ps(f, _mm_set1_ps(d.alpha[o]));
      if (full) _mm_storeu_ps(d.out + o * d.plane, f);
      else _mm_maskstore_ps(d.out + o * d.plane, mask, f);
    }
  }
}

// Per 64-bit lane, the number of set bits of v's bytes, as bytes (two nibble lookups).
__attribute__((target("avx2"))) inline __m256i byte_counts(__m256i v, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_add_epi8(lo, hi);
}

// One step of an AVX2 block, unmasked: the low nibbles of each input vector (shared by the OB
// output channels) XORed with the weights' low nibbles and looked up with vpshufb, then the
// high nibbles: 3 operations per 256 bits and nibble, 2 + OB * PV registers of inputs and
// counts.
template <int OB, int PV>
__attribute__((target("avx2"))) inline void step_avx2(const uint64_t* const (&src)[PV],
                                                      const uint64_t* wf, __m256i lut,
                                                      __m256i low, __m256i (&bytes)[OB][PV]) {
  for (int half = 0; half < 2; ++half) {
    __m256i x[PV];
    for (int p = 0; p < PV; ++p) {
      x[p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[p]));
      x[p] = _mm256_and_si256(half ? _mm256_srli_epi16(x[p], 4) : x[p], low);
    }
    for (int o = 0; o < OB; ++o) {
      const __m256i w = _mm256_set1_epi64x(static_cast<long long>(wf[2 * o + half]));
      for (int p = 0; p < PV; ++p) {
        bytes[o][p] = _mm256_add_epi8(bytes[o][p],
                                      _mm256_shuffle_epi8(lut, _mm256_xor_si256(x[p], w)));
        keep(bytes[o][p]);
      }
    }
  }
}

// One step, masked: popcounts of (x ^ w) & m and of m (the weight rebuilt from its nibbles).
template <int OB, int PV>
__attribute__((target("avx2"))) inline void step_avx2_masked(
    const uint64_t* const (&src)[PV], const uint64_t* const (&msk)[PV], const uint64_t* wf,
    __m256i lut, __m256i low, __m256i (&bytes)[OB][PV], __m256i (&nzbytes)[PV]) {
  __m256i x[PV], m[PV];
  for (int p = 0; p < PV; ++p) {
    x[p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[p]));
    m[p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(msk[p]));
    nzbytes[p] = _mm256_add_epi8(nzbytes[p], byte_counts(m[p], lut, low));
  }
  for (int o = 0; o < OB; ++o) {
    const __m256i w = _mm256_set1_epi64x(static_cast<long long>(wf[2 * o] | wf[2 * o + 1] << 4));
    for (int p = 0; p < PV; ++p) {
      const __m256i v = _mm256_and_si256(_mm256_xor_si256(x[p], w), m[p]);
      bytes[o][p] = _mm256_add_epi8(bytes[o][p], byte_counts(v, lut, low));
    }
  }
}

// AVX2 (popcounts by nibble lookups): byte counts grow by at most 8 a step, so they are summed
// to the 64-bit lanes (vpsadbw) every 31 steps: once per block up to 3 input words at 3x3.
template <int OB, int PV, bool MASKED>
__attribute__((target("avx2"))) void block_avx2(const Conv& c, int64_t b, int64_t ob,
                                                const Tile* tiles, int tn) {
  const uint64_t* src[PV];
  const uint64_t* msk[PV];
  for (int p = 0; p < PV; ++p) {
    src[p] = c.in + b * c.sample + tiles[p < tn ? p : 0].base;
    msk[p] = MASKED ? c.nz + (src[p] - c.in) : nullptr;
  }
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  __m256i sums[OB][PV], nonzero[PV];
  for (int p = 0; p < PV; ++p) {
    nonzero[p] = zero;
    for (int o = 0; o < OB; ++o) sums[o][p] = zero;
  }
  const uint64_t* wb = c.w + ob * c.steps * 2 * OB;
  for (int64_t f0 = 0; f0 < c.steps; f0 += 31) {
    const int64_t f1 = std::min<int64_t>(c.steps, f0 + 31);
    __m256i bytes[OB][PV], nzbytes[PV];
    for (int p = 0; p < PV; ++p) {
      nzbytes[p] = zero;
      for (int o = 0; o < OB; ++o) bytes[o][p] = zero;
    }
    const uint64_t* wf = wb + f0 * 2 * OB;
    for (int64_t f = f0; f < f1; ++f, wf += 2 * OB) {
      const int64_t off = c.off[f];
      const uint64_t* at[PV];
      for (int p = 0; p < PV; ++p) at[p] = src[p] + off;
      if constexpr (MASKED) {
        const uint64_t* mat[PV];
        for (int p = 0; p < PV; ++p) mat[p] = msk[p] + off;
        step_avx2_masked<OB, PV>(at, mat, wf, lut, low, bytes, nzbytes);
      } else {
        step_avx2<OB, PV>(at, wf, lut, low, bytes);
      }
    }
    for (int p = 0; p < PV; ++p) {
      const __m256i t = _mm256_sad_epu8(nzbytes[p], zero);
      nonzero[p] = f0 ? _mm256_add_epi64(nonzero[p], t) : t;
      for (int o = 0; o < OB; ++o) {
        const __m256i u = _mm256_sad_epu8(bytes[o][p], zero);
        sums[o][p] = f0 ? _mm256_add_epi64(sums[o][p], u) : u;
      }
    }
  }
  finish_avx2<OB, PV, MASKED>(c, b, ob, tiles, tn, sums, nonzero);
}
#endif

using BlockFn = void (*)(const Conv&, int64_t, int64_t, const Tile*, int);

// Work items of (sample, group of output-channel blocks, block of PV tiles) on the OpenMP
// threads: each item computes its tiles' bases once and runs them through its group's blocks of
// OB output channels (blocks[tn - 1]: the kernel of tn tiles, so that a last, partial tile block
// computes only its own); groups are split finer only when there are too few tile blocks to
// keep every thread busy (small images at batch 1). The tile blocks vary fastest, so that a
// thread's share of the items holds whole groups (each with the cheaper partial tile block)
// and the weights of a group serve its tiles one after the other.
template <int V, int OB, int PV>
void conv_run(const Conv& c, int64_t n, int threads, const BlockFn (&blocks)[PV]) {
  const int64_t per_row = (c.wo + V - 1) / V, tiles = c.ho * per_row;
  const int64_t tblocks = (tiles + PV - 1) / PV, oblocks = (c.o + OB - 1) / OB;
  const int64_t want = 8 * static_cast<int64_t>(threads);
  const int64_t groups = std::min<int64_t>(oblocks, std::max<int64_t>(1, (want + n * tblocks - 1) /
                                                                            (n * tblocks)));
  const int64_t per_group = (oblocks + groups - 1) / groups;
  const int64_t total = n * tblocks * groups;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    const int64_t tb = i % tblocks, g = (i / tblocks) % groups, b = i / (groups * tblocks);
    Tile tile[PV];
    int tn = 0;
    for (int p = 0; p < PV && tb * PV + p < tiles; ++p, ++tn) {
      const int64_t t = tb * PV + p, oh = t / per_row, ow0 = (t % per_row) * V;
      tile[p] = {(c.oy + oh * c.s) * c.wrow + ow0, oh, ow0,
                 static_cast<int>(std::min<int64_t>(V, c.wo - ow0))};
    }
    const int64_t last = std::min(oblocks, (g + 1) * per_group);
    const BlockFn block = blocks[tn - 1];
    for (int64_t ob = g * per_group; ob < last; ++ob) block(c, b, ob, tile, tn);
  }
}

// ---------------------------------------------------------------------------------------------
// AMX: the convolutions of few input channels as int8 tile products (Intel AMX-TILE and
// AMX-INT8). `tdpbssd` adds a 16 x 64 int8 tile times a 64 x 16 one (in groups of 4 bytes) to
// 16 x 16 int32 sums: 16384 products per instruction, about 2.5x the popcount loop's rate on one
// core. The +-1 values become bytes, and the sums are the float model's exactly, without a
// border table: the input is staged per thread as bytes +1 / -1 and 0 in the zero padding (and,
// masked, where the input is 0), so that dot = S - extra.
//
// A staged row holds pixel after pixel of a packed row (its phase layout too), 64 bytes per
// word: a tile of 16 consecutive output positions of one output row reads 16 consecutive
// pixels of each tap's row at any stride and dilation, one tile load each (A: positions x 64
// input channels). Rows are staged once each, into a ring of the rows that a group of output
// rows reads (a few kilobytes: first-level cache). The weights are B tiles (64 input channels
// x 16 output channels, 0 past C_in), a block's two of a step side by side. A block is 2
// position tiles x 2 channel tiles:
// 4 accumulator tiles and 2 + 2 operand tiles, the 8 tile registers, so that each tile load
// serves one product. Its sums are stored, and their epilogue (transposed to rows of output
// channels, less the corrections, scaled, stored NCHW) runs during the next block's products.
//
// The popcount kernel stays as fast or faster on the other convolutions (measured through the
// engine on a Xeon with AMX, 2 threads): many input channels (the int8 weights, 8x their bits,
// stream from further away: 512 channels 0.44-0.63x; 256 channels 1.23x with warm caches but
// 0.89x after the caches were flushed, as in a network), short sums (16-32 channels or a 1x1
// kernel: a tile's staging and transpose are not paid back; 0.98-1.03x), narrow rows (8 wide:
// tiles of 16 positions half empty; 0.83-0.92x) or little work (64 channels on 14x14: 1.04x,
// within the noise). amx_rule says which run here; the tiles measured 1.13-1.64x faster on
// those it takes with warm caches, 0.87-1.17x with the caches flushed before each run.
#if BNAS_AMX
// At most AMX_WORDS input words and at least AMX_MIN_K input channels x taps (the weights laid
// out for tiles), outputs at least AMX_MIN_WO wide and at least AMX_MIN_MACS products (input
// channels x taps x output channels x outputs) per sample. bnas_xnor_amx_rule sets them (the
// tests run every convolution here).
enum AmxRule { AMX_WORDS, AMX_MIN_K, AMX_MIN_WO, AMX_MIN_MACS, AMX_RULES };
int64_t amx_rule[AMX_RULES] = {2, 320, 14, 10000000};

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

constexpr TileConfig tile_config() {
  TileConfig t{};
  t.palette = 1;
  for (int i = 0; i < 8; ++i) {
    t.colsb[i] = 64;
    t.rows[i] = 16;
  }
  return t;
}

// In memory for ldtilecfg, which reads it unseen by the compiler (a local one's stores can be
// dropped as dead): every tile 16 rows of 64 bytes.
alignas(64) const TileConfig TILES = tile_config();

struct AmxConv {
  const uint64_t* in;
  const uint64_t* nz;  // or null (see struct Conv)
  int64_t sample, words, hp, wrow, s, o, kh, kw, d, oy, ho, wo, pt, h;
  const int8_t* w;        // B tiles: [channel pair][step][2][16 x 64 bytes]
  const int64_t* taprow;  // per step: its tap's input row from an output row's first one
  const int64_t* off;     // per step: the byte offset of its tap's column and word in a row
  const uint8_t* inside;  // per column of a packed row: a real input column (not padding)
  const int32_t* extra;   // as in struct Conv
  const float* alpha;
  float* out;
};

// The staged rows' buffer of the calling thread (64-byte aligned: tile loads of unaligned rows
// ran 2-3x slower).
struct AmxStage {
  int8_t* p = nullptr;
  size_t size = 0;
  ~AmxStage() { std::free(p); }
  int8_t* get(size_t bytes) {
    if (bytes > size) {
      std::free(p);
      size = (bytes + 63) / 64 * 64;
      p = static_cast<int8_t*>(std::aligned_alloc(64, size));
    }
    return p;
  }
};

// Row y of sample b's packed input as bytes (c.wrow pixels of 64 bytes per word).
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw")))
void amx_stage(const AmxConv& c, int64_t b, int64_t y, int8_t* row) {
  const int64_t plane = c.hp * c.wrow, pix = c.words * 64;
  if (y < c.pt || y >= c.pt + c.h) {
    std::memset(row, 0, c.wrow * pix);
    return;
  }
  const uint64_t* in = c.in + b * c.sample + y * c.wrow;
  const uint64_t* nz = c.nz ? c.nz + b * c.sample + y * c.wrow : nullptr;
  const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
  for (int64_t x = 0; x < c.wrow; ++x)
    for (int64_t j = 0; j < c.words; ++j) {
      __mmask64 keep = c.inside[x] ? ~0ull : 0ull;
      if (nz) keep &= nz[j * plane + x];
      const __m512i v = _mm512_mask_blend_epi8(in[j * plane + x], plus, minus);
      _mm512_store_si512(row + x * pix + j * 64, _mm512_maskz_mov_epi8(keep, v));
    }
}

// r[i] (16 int32) as columns: r[n] lane i = the old r[i] lane n.
__attribute__((target("avx512f"), always_inline)) inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 4; ++k) {
      t[8 * i + k] = _mm512_shuffle_i32x4(r[8 * i + k], r[8 * i + 4 + k], 0x88);
      t[8 * i + 4 + k] = _mm512_shuffle_i32x4(r[8 * i + k], r[8 * i + 4 + k], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0xdd);
  }
}

// A tile of 16 output positions: output row oh from column ow0 (its first tap row: input row
// `row`).
struct AmxTile {
  int64_t row, oh, ow0;
};

// The sums of one accumulator tile (16 positions x 16 output channels from o0, as stored) to
// sample b's output.
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"), always_inline)) inline void
amx_finish(const AmxConv& c, int64_t b, const AmxTile& t, int64_t o0, const int32_t* sums) {
  if (o0 >= c.o) return;
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(sums + 16 * i);
  transpose16(r);
  const int64_t plane = c.ho * c.wo, at = (b * c.o + o0) * plane + t.oh * c.wo + t.ow0;
  const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(16, c.wo - t.ow0)) - 1u);
  // The steps of finish_avx512's epilogue; its one call to a shared helper measured 2-7% slower
  // here (the helper's pointer arguments changed the code GCC makes of this loop).
  for (int n = 0; n < 16 && o0 + n < c.o; ++n) {
    __m512i dot = r[n];
    if (c.extra)
      dot = _mm512_sub_epi32(dot, _mm512_maskz_loadu_epi32(m, c.extra + at + n * plane));
    __m512 f = _mm512_cvtepi32_ps(dot);
    if (c.alpha) f = _mm512_mul_ps(f, _mm512_set1_ps(c.alpha[o0 + n]));
    _mm512_mask_storeu_ps(c.out + at + n * plane, m, f);
  }
}

// A block whose sums wait for their epilogue: its position tiles (count: 1 or 2), channel pair
// and stored sums (accumulator q: position tile q / 2, channel tile q % 2).
struct AmxDone {
  AmxTile tiles[2];
  int count;
  int64_t pair;
  const int32_t (*sums)[256];
};

__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"), always_inline)) inline void
amx_finish_one(const AmxConv& c, int64_t b, const AmxDone& d, int q) {
  if (q < 2 * d.count) amx_finish(c, b, d.tiles[q >> 1], (2 * d.pair + (q & 1)) * 16, d.sums[q]);
}

// Output rows oh0 .. oh1 - 1 of sample b, for every output channel, on the calling thread.
// They are taken in groups of output rows with at least two tiles (one row, or two where a row
// is one tile); the input rows a group reads are staged in a ring of as many rows (input row y
// in slot y % ring), each row staged once, so that the tile loads read a few kilobytes that
// stay in the first-level cache.
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,amx-tile,amx-int8")))
void amx_rows(const AmxConv& c, int64_t b, int64_t oh0, int64_t oh1) {
  thread_local AmxStage stage;
  const int64_t pix = c.words * 64, row_bytes = c.wrow * pix, per_row = (c.wo + 15) / 16;
  const int64_t group = per_row >= 2 ? 1 : 2, ring = (group - 1) * c.s + (c.kh - 1) * c.d + 1;
  int8_t* rows = stage.get(ring * row_bytes + 16 * pix);
  std::memset(rows + ring * row_bytes, 0, 16 * pix);  // read past the last slot's row end
  const int64_t steps = c.words * c.kh * c.kw, pairs = (c.o + 31) / 32;
  auto at = [&](const AmxTile& t, int64_t f) {
    return rows + (t.row + c.taprow[f]) % ring * row_bytes + t.ow0 * pix + c.off[f];
  };
  alignas(64) int32_t sums[2][4][256];
  AmxDone done{};
  bool waiting = false;
  int cur = 0;
  int64_t staged = c.oy + oh0 * c.s;  // the first input row not staged yet
  _tile_loadconfig(&TILES);
  for (int64_t g0 = oh0; g0 < oh1; g0 += group) {
    const int64_t g1 = std::min(oh1, g0 + group), tiles = (g1 - g0) * per_row;
    for (const int64_t last = c.oy + (g1 - 1) * c.s + (c.kh - 1) * c.d; staged <= last; ++staged)
      amx_stage(c, b, staged, rows + staged % ring * row_bytes);
    for (int64_t t = 0; t < tiles; t += 2) {
      AmxTile pair_tiles[2];
      for (int64_t k = 0; k < 2; ++k) {
        const int64_t u = std::min(t + k, tiles - 1), oh = g0 + u / per_row;
        pair_tiles[k] = {c.oy + oh * c.s, oh, (u % per_row) * 16};
      }
      for (int64_t pair = 0; pair < pairs; ++pair) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        const int8_t* w = c.w + pair * steps * 2048;
        for (int64_t f = 0; f < steps; ++f, w += 2048) {
          _tile_loadd(4, at(pair_tiles[0], f), pix);
          _tile_loadd(5, at(pair_tiles[1], f), pix);
          _tile_loadd(6, w, 64);
          _tile_loadd(7, w + 1024, 64);
          _tile_dpbssd(0, 4, 6);
          _tile_dpbssd(1, 4, 7);
          _tile_dpbssd(2, 5, 6);
          _tile_dpbssd(3, 5, 7);
          if (waiting && f < 4) amx_finish_one(c, b, done, static_cast<int>(f));
        }
        if (waiting)
          for (int64_t q = steps; q < 4; ++q) amx_finish_one(c, b, done, static_cast<int>(q));
        _tile_stored(0, sums[cur][0], 64);
        _tile_stored(1, sums[cur][1], 64);
        _tile_stored(2, sums[cur][2], 64);
        _tile_stored(3, sums[cur][3], 64);
        done = {{pair_tiles[0], pair_tiles[1]}, t + 1 < tiles ? 2 : 1, pair, sums[cur]};
        waiting = true;
        cur ^= 1;
      }
    }
  }
  if (waiting)
    for (int q = 0; q < 4; ++q) amx_finish_one(c, b, done, q);
  _tile_release();
}

// The AMX convolution: each sample's output rows split in as many parts as keep the threads
// busy (each part stages its own rows).
void amx_run(const AmxConv& c, int64_t n, int threads) {
  const int64_t parts = std::min<int64_t>(c.ho, std::max<int64_t>(1, (threads + n - 1) / n));
  const int64_t per = (c.ho + parts - 1) / parts;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n * parts; ++i) {
    const int64_t b = i / parts, oh0 = (i % parts) * per, oh1 = std::min(c.ho, oh0 + per);
    if (oh0 < oh1) amx_rows(c, b, oh0, oh1);
  }
}

// Whether this CPU runs AMX-TILE and AMX-INT8 and the OS lets this process use the tile state
// (asked once: arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA).
bool amx_usable() {
  static const bool usable = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 24) & 1) || !((d >> 25) & 1)) return false;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return usable;
}

// Bytes of the AMX weights (0 when the convolution is left to the popcount kernel).
int64_t amx_weights_bytes(int64_t o, int64_t c, int64_t taps) {
  const int64_t words = (c + 63) / 64;
  if (words > amx_rule[AMX_WORDS] || c * taps < amx_rule[AMX_MIN_K]) return 0;
  return (o + 31) / 32 * words * taps * 2048;
}

// The B tiles of bits (o_pad x words x taps words): [pair][step j * taps + t][2][16 rows][16
// channels][4 bytes], input channel 64 j + 4 row + byte, 0 past c and o.
void amx_weights(const uint64_t* bits, int64_t o, int64_t c, int64_t words, int64_t taps,
                 int8_t* out) {
  const int64_t steps = words * taps;
  std::memset(out, 0, (o + 31) / 32 * steps * 2048);
  for (int64_t oc = 0; oc < o; ++oc)
    for (int64_t f = 0; f < steps; ++f) {
      const uint64_t w = bits[oc * steps + f];
      int8_t* tile = out + ((oc / 32 * steps + f) * 2 + (oc / 16) % 2) * 1024 + (oc % 16) * 4;
      for (int64_t k = 0; k < 64 && 64 * (f / taps) + k < c; ++k)
        tile[(k / 4) * 64 + k % 4] = (w >> k) & 1 ? -1 : 1;
    }
}

// bnas_xnor_conv on the AMX tiles (weights: amx_weights's), for geometry g (with the padding
// and input size: g[14..17] = pt, pl, h, w).
void amx_conv(const uint64_t* in, const uint64_t* nz, const int64_t* g, const int8_t* weights,
              const int32_t* extra, const float* alpha, float* out, int threads) {
  const int64_t n = g[0], words = g[1], hp = g[2], wrow = g[3], wc = g[4], s = g[5], o = g[6],
                kh = g[7], kw = g[8], d = g[9], oy = g[10], ox = g[11], ho = g[12], wo = g[13],
                pt = g[14], pl = g[15], h = g[16], w = g[17];
  const int64_t taps = kh * kw, pix = words * 64;
  std::vector<int64_t> taprow(words * taps), off(words * taps);
  for (int64_t j = 0; j < words; ++j)
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t k = 0; k < kw; ++k) {
        const int64_t col = ox + k * d, f = j * taps + i * kw + k;
        taprow[f] = i * d;
        off[f] = packed_column(col, s, wc) * pix + 64 * j;
      }
  std::vector<uint8_t> inside(wrow);
  for (int64_t x = 0; x < wrow; ++x) {
    const int64_t col = (x % wc) * s + x / wc;  // the padded column at packed column x
    inside[x] = col >= pl && col < pl + w;
  }
  const AmxConv c{in, nz, words * hp * wrow, words, hp, wrow, s, o, kh, kw, d, oy, ho, wo, pt,
                  h, weights, taprow.data(), off.data(), inside.data(), extra, alpha, out};
  amx_run(c, n, threads);
}
#endif

// Words of the popcount kernels' weights in path isa's layout (see WeightLayout) for o output
// channels and `steps` = words * taps steps.
int64_t popcount_weights_size(int64_t o, int64_t steps, int isa) {
  const WeightLayout l = weight_layout(isa);
  return (o + l.ob - 1) / l.ob * l.ob * steps * l.parts;
}

// The AMX path's weights: a header of AMX_HEADER words (the first: where its B tiles start, in
// words, or 0 where the popcount kernel runs the convolution), the AVX-512 layout, the B tiles.
constexpr int64_t AMX_HEADER = 8;

// Where the B tiles start (in words, 64-byte aligned) after a popcount layout of that many words.
constexpr int64_t amx_tiles_at(int64_t popcount) { return AMX_HEADER + (popcount + 7) / 8 * 8; }

}  // namespace

extern "C" {

// Bit i set when path i (PORTABLE, AVX2, AVX512 with VPOPCNTDQ, AMX) can run on this CPU.
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
#if BNAS_AMX
  if ((isas >> AVX512 & 1) && amx_usable()) isas |= 1 << AMX;
#endif
  return isas;
}

// Which convolutions the AMX path runs on its tiles, the others on its popcount kernel (see
// amx_rule; the weights built from now on): rule[0..3] and the current settings swapped.
void bnas_xnor_amx_rule(int64_t* rule) {
#if BNAS_AMX
  for (int i = 0; i < AMX_RULES; ++i) std::swap(rule[i], amx_rule[i]);
#else
  (void)rule;
#endif
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
  if (isa >= AVX512) return pack_all(p, threads, row_avx512);
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

// Words of the weights of o output channels, c input channels and `taps` taps in path isa's
// layout.
int64_t bnas_xnor_weights_size(int64_t o, int64_t c, int64_t taps, int isa) {
  const int64_t words = (c + 63) / 64, popcount = popcount_weights_size(o, words * taps, isa);
#if BNAS_AMX
  if (isa == AMX)
    return amx_tiles_at(popcount) + amx_weights_bytes(o, c, taps) / 8;
#endif
  return popcount;
}

// The weights (o_pad x words x taps words, as bnas.deploy.kernels.pack_weight_bits lays them
// out) in path isa's layout: blocks of OB output channels, per step the block's OB words, or for
// AVX2 its OB pairs (low nibbles, high nibbles: w & 0x0f0f.., (w >> 4) & 0x0f0f..); AMX: see
// AMX_HEADER.
void bnas_xnor_weights(const uint64_t* weights, int64_t o, int64_t c, int64_t taps, int isa,
                       uint64_t* out) {
  const int64_t words = (c + 63) / 64, steps = words * taps;
#if BNAS_AMX
  if (isa == AMX) {
    const int64_t popcount = popcount_weights_size(o, steps, isa);
    const int64_t tiles = amx_weights_bytes(o, c, taps) ? amx_tiles_at(popcount) : 0;
    std::fill(out, out + AMX_HEADER, 0);
    out[0] = static_cast<uint64_t>(tiles);
    if (tiles) amx_weights(weights, o, c, words, taps, reinterpret_cast<int8_t*>(out + tiles));
    out += AMX_HEADER;
  }
#endif
  const WeightLayout l = weight_layout(isa);
  const uint64_t low = 0x0f0f0f0f0f0f0f0full;
  for (int64_t oc = 0; oc < (o + l.ob - 1) / l.ob * l.ob; ++oc)
    for (int64_t f = 0; f < steps; ++f) {
      const uint64_t w = oc < o ? weights[oc * steps + f] : 0;
      uint64_t* at = out + (((oc / l.ob) * steps + f) * l.ob + oc % l.ob) * l.parts;
      if (l.parts == 1) {
        at[0] = w;
      } else {
        at[0] = w & low;
        at[1] = (w >> 4) & low;
      }
    }
}

// The binary convolution (struct Conv) of the packed input `in` (nz: the masked mode's nonzero
// bits, or null) with the weights in path isa's layout; geometry in g: n, words, hp, wrow, wc,
// s, o, kh, kw, d, oy, ox, ho, wo, pt, pl, h, w; `table` as in struct Conv.
void bnas_xnor_conv(const uint64_t* in, const uint64_t* nz, const int64_t* g,
                    const uint64_t* weights, const int32_t* rowclass, const int32_t* table,
                    const int32_t* extra, const float* alpha, float* out, int isa, int threads) {
  const int64_t n = g[0], words = g[1], hp = g[2], wrow = g[3], wc = g[4], s = g[5], o = g[6],
                kh = g[7], kw = g[8], d = g[9], oy = g[10], ox = g[11], ho = g[12], wo = g[13];
#if BNAS_AMX
  if (isa == AMX) {
    const auto tiles = static_cast<int64_t>(weights[0]);
    const int64_t macs = 64 * words * kh * kw * o * ho * wo;  // channels rounded up to words
    if (tiles && wo >= amx_rule[AMX_MIN_WO] && macs >= amx_rule[AMX_MIN_MACS])
      return amx_conv(in, nz, g, reinterpret_cast<const int8_t*>(weights + tiles), extra, alpha,
                      out, threads);
    weights += AMX_HEADER;
    isa = AVX512;
  }
#endif
  const int64_t taps = kh * kw, plane = hp * wrow;
  std::vector<int64_t> off(words * taps);
  for (int64_t j = 0; j < words; ++j)
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t k = 0; k < kw; ++k) {
        const int64_t col = ox + k * d;
        off[j * taps + i * kw + k] = j * plane + i * d * wrow + packed_column(col, s, wc);
      }
  const Conv c{in, nz, words * plane, weights, words * taps, o, off.data(), oy, s, wrow, ho,
               wo, rowclass, table, extra, alpha, out};
#if BNAS_X86
  if (isa == AVX512) {
    static const BlockFn plain[] = {block_avx512<AVX512_OB, 1, false>,
                                    block_avx512<AVX512_OB, 2, false>,
                                    block_avx512<AVX512_OB, 3, false>};
    static const BlockFn masked[] = {block_avx512<AVX512_OB, 1, true>,
                                     block_avx512<AVX512_OB, 2, true>,
                                     block_avx512<AVX512_OB, 3, true>};
    static_assert(AVX512_PV == 3);
    return conv_run<8, AVX512_OB, AVX512_PV>(c, n, threads, nz ? masked : plain);
  }
  if (isa == AVX2) {
    static const BlockFn plain[] = {block_avx2<AVX2_OB, 1, false>, block_avx2<AVX2_OB, 2, false>};
    static const BlockFn masked[] = {block_avx2<AVX2_OB, 1, true>};
    static_assert(AVX2_PV == 2);
    if (nz) return conv_run<4, AVX2_OB, 1>(c, n, threads, masked);
    return conv_run<4, AVX2_OB, AVX2_PV>(c, n, threads, plain);
  }
#endif
  static const BlockFn plain[] = {block_portable<PORTABLE_OB, 1, false>};
  static const BlockFn masked[] = {block_portable<PORTABLE_OB, 1, true>};
  conv_run<4, PORTABLE_OB, 1>(c, n, threads, nz ? masked : plain);
}

// extra[b, o, oh, ow] += w_b[o, ch, i, j] for every recorded sign(0) at (b, ch, y, x) and
// every tap (i, j) through which output (oh, ow) reads it (padded coordinates y + pt, x + pl);
// w_b = 0 where zero_bits (the weights' layout, or null) marks a binary weight exactly 0.
void bnas_xnor_zero_fix(const int64_t* zeros, int64_t count, const int64_t* g, int64_t c,
                        int64_t h, int64_t w, int64_t pt, int64_t pl, const uint64_t* weights,
                        const uint64_t* zero_bits, int32_t* extra) {
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
          const int64_t at = (oc * words + ch / 64) * taps + i * kw + j;
          if (zero_bits && (zero_bits[at] >> (ch % 64)) & 1) continue;
          extra[((b * o + oc) * ho + r / s) * wo + q / s] +=
              1 - 2 * static_cast<int32_t>((weights[at] >> (ch % 64)) & 1);
        }
      }
    }
  }
}

// extra[b, o, oh, ow] += x_b[b, ch, tap (i, j) of (oh, ow)] for every binary weight (o, ch, i, j)
// exactly 0 (list: flat indices into O x C x kh x kw). The weights' bits hold such a weight as
// +1, so the popcount added x_b there; this takes it back. x_b is the packed input's +-1, 0 in
// the padding and, masked (nz), where the input is 0; unmasked, a sign(0) reads +1, which
// bnas_xnor_zero_fix's zero_bits balance (a zero weight counts 0 there, not +1).
void bnas_xnor_zero_weights(const uint64_t* in, const uint64_t* nz, const int64_t* g, int64_t c,
                            int64_t h, int64_t w, int64_t pt, int64_t pl, const int64_t* list,
                            int64_t count, int32_t* extra) {
  const int64_t n = g[0], words = g[1], hp = g[2], wrow = g[3], wc = g[4], s = g[5], o = g[6],
                kh = g[7], kw = g[8], d = g[9], oy = g[10], ox = g[11], ho = g[12], wo = g[13];
  const int64_t plane = hp * wrow;
  for (int64_t z = 0; z < count; ++z) {
    const int64_t idx = list[z], j = idx % kw, i = (idx / kw) % kh, ch = (idx / (kw * kh)) % c,
                  oc = idx / (kw * kh * c);
    for (int64_t b = 0; b < n; ++b)
      for (int64_t oh = 0; oh < ho; ++oh) {
        const int64_t y = oy + oh * s + i * d;
        if (y < pt || y >= pt + h) continue;
        const int64_t row = (b * words + ch / 64) * plane + y * wrow;
        int32_t* out = extra + ((b * o + oc) * ho + oh) * wo;
        for (int64_t ow = 0; ow < wo; ++ow) {
          const int64_t col = ox + ow * s + j * d;
          if (col < pl || col >= pl + w) continue;
          const int64_t at = row + packed_column(col, s, wc);
          if (nz && !((nz[at] >> (ch % 64)) & 1)) continue;
          out[ow] += 1 - 2 * static_cast<int32_t>((in[at] >> (ch % 64)) & 1);
        }
      }
  }
}

}  // extern "C"

// ---------------------------------------------------------------------------------------------
// Network level (bnas.deploy.layers, bnas.deploy.cell, bnas.deploy.blocks): whole binary
// operations, those of one network step together, in one call. At batch 1 a small network's
// binary convolutions take tens of microseconds each, so what surrounds the kernels (allocating
// and zeroing the packed input, a call each for packing, corrections and convolution, the
// BatchNorm, shortcut addition and activation after it) costs as much as they do; here it is one
// call from Python, through the entry points above, on a packed input that
// lives in a buffer of the thread running it, reused from call to call.
namespace {

// What stays fixed for one convolution and one input size: bnas.deploy.kernels.RECORD names the
// fields, in this order (pointers stored as 64-bit integers).
enum Field {
  F_N, F_C, F_H, F_W, F_PT, F_PL, F_HP, F_WROW, F_WC, F_S, F_O, F_HO, F_WO, F_FMA, F_ZERO_IS_ZERO,
  F_MASKED, F_GEOMETRY, F_WEIGHTS, F_LAYOUT, F_ROWCLASS, F_TABLE, F_ALPHA, F_BIAS,
  F_ZERO_BITS, F_ZERO_LIST, F_ZERO_COUNT, F_FIELDS
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

// What follows a convolution's scale, in one pass over its output, as the float model's layers
// compute it (torch, elementwise): + bias (the record's), an eval BatchNorm z * scale + shift
// (affine(), fused as torch's is: the packing's probe), + residual (a tensor of the output's
// shape), then the activation: ReLU (v < 0 ? 0 : v), Hardtanh (clamped to params[0..1]) or PReLU
// (v > 0 ? v : params[o] * v); a NaN stays NaN in each. Each step is one IEEE operation, so the
// result is torch's bit for bit, whichever path computes it.
enum Act { ACT_NONE = 0, ACT_RELU = 1, ACT_HARDTANH = 2, ACT_PRELU = 3 };

struct Epilogue {
  const float* bias;
  const float* scale;  // with shift: the BatchNorm, or null
  const float* shift;
  const float* residual;
  int act;
  const float* params;
  bool fma;
};

inline float activate(float v, int act, const float* params, int64_t o) {
  if (act == ACT_RELU) return v < 0.0f ? 0.0f : v;
  if (act == ACT_HARDTANH) return v < params[0] ? params[0] : (v > params[1] ? params[1] : v);
  if (act == ACT_PRELU) return v > 0.0f ? v : params[o] * v;
  return v;
}

// Elements q0 .. len - 1 of output plane `plane` (channel o), one at a time.
inline void finish_scalar(const Epilogue& e, float* y, const float* r, int64_t o, int64_t q0,
                          int64_t len) {
  for (int64_t q = q0; q < len; ++q) {
    float v = y[q];
    if (e.bias) v = v + e.bias[o];
    if (e.scale) v = affine(v, e.scale[o], e.shift[o], e.fma);
    if (r) v = v + r[q];
    y[q] = activate(v, e.act, e.params, o);
  }
}

void finish_plane_portable(const Epilogue& e, float* y, const float* r, int64_t o, int64_t len) {
  finish_scalar(e, y, r, o, 0, len);
}

#if BNAS_X86
// The same, 8 elements at a time (the last few one at a time, with the same operations).
__attribute__((target("avx2,fma"))) void finish_plane_avx2(const Epilogue& e, float* y,
                                                           const float* r, int64_t o,
                                                           int64_t len) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 b = _mm256_set1_ps(e.bias ? e.bias[o] : 0.0f);
  const float lo = e.act == ACT_HARDTANH ? e.params[0] : 0.0f,
              hi = e.act == ACT_HARDTANH ? e.params[1] : 0.0f,
              slope = e.act == ACT_PRELU ? e.params[o] : 0.0f;
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), vslope = _mm256_set1_ps(slope);
  int64_t q = 0;
  for (; q + 8 <= len; q += 8) {
    __m256 v = _mm256_loadu_ps(y + q);
    if (e.bias) v = _mm256_add_ps(v, b);
    if (e.scale) v = e.fma ? affine8<true>(v, e.scale[o], e.shift[o])
                           : affine8<false>(v, e.scale[o], e.shift[o]);
    if (r) v = _mm256_add_ps(v, _mm256_loadu_ps(r + q));
    if (e.act == ACT_RELU) {
      v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    } else if (e.act == ACT_HARDTANH) {
      v = _mm256_blendv_ps(v, vhi, _mm256_cmp_ps(v, vhi, _CMP_GT_OQ));
      v = _mm256_blendv_ps(v, vlo, _mm256_cmp_ps(v, vlo, _CMP_LT_OQ));
    } else if (e.act == ACT_PRELU) {
      v = _mm256_blendv_ps(_mm256_mul_ps(v, vslope), v, _mm256_cmp_ps(v, zero, _CMP_GT_OQ));
    }
    _mm256_storeu_ps(y + q, v);
  }
  finish_scalar(e, y, r, o, q, len);
}
#endif

// The epilogue over the n x o planes of an output.
void finish_all(const Epilogue& e, float* out, int64_t planes, int64_t o, int64_t plane,
                int isa, int threads) {
  auto* fn = finish_plane_portable;
#if BNAS_X86
  if (isa != PORTABLE) fn = finish_plane_avx2;
#endif
#pragma omp parallel for num_threads(threads) schedule(static) if (planes * plane > (1 << 16))
  for (int64_t i = 0; i < planes; ++i)
    fn(e, out + i * plane, e.residual ? e.residual + i * plane : nullptr, i % o, plane);
}

// Where binconv's time goes, for benchmarks (bnas_xnor_timing): nanoseconds spent packing and in
// the whole call, summed over calls (over threads when tasks run side by side), while counting.
std::atomic<bool> counting{false};
std::atomic<int64_t> packing_ns{0}, binconv_ns{0};

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

// out = epilogue(conv(b(x), sign W) * alpha) for record r (see enum Field), x packed with
// the BatchNorm terms and threshold given (each nullable). An unmasked record whose input has
// more than 1 in masked_above signs 0 is run in the masked mode and set to it for good
// (r[F_MASKED] = 1), as bnas.deploy.kernels.BinaryConvPlan decides: returns 1 then, else 0.
int binconv(int64_t* r, const float* x, const float* scale, const float* shift,
            const float* thresh, Epilogue e, int64_t masked_above, float* out, int isa,
            int threads) {
  Scratch& s = scratch();
  bool masked = r[F_MASKED] != 0;
  int switched = 0;
  const bool timed = counting.load(std::memory_order_relaxed);
  const int64_t started = timed ? now_ns() : 0;
  const int64_t count = pack_into(s, r, x, scale, shift, thresh, masked, isa, threads);
  const int64_t inputs = r[F_N] * r[F_C] * r[F_H] * r[F_W];
  if (!masked && count * masked_above > inputs) {
    r[F_MASKED] = 1;
    masked = switched = 1;
    pack_into(s, r, x, scale, shift, thresh, true, isa, threads);
  }
  if (timed) packing_ns += now_ns() - started;
  const int64_t* g = field_ptr<const int64_t>(r, F_GEOMETRY);
  const uint64_t* weights = field_ptr<const uint64_t>(r, F_WEIGHTS);
  const int64_t outputs = r[F_N] * r[F_O] * r[F_HO] * r[F_WO];
  const int32_t* extra = nullptr;
  const bool fix = !masked && count > 0, zero_weights = r[F_ZERO_COUNT] > 0;
  if (fix || zero_weights) {
    s.extra.assign(outputs, 0);
    if (fix)
      bnas_xnor_zero_fix(s.zeros.data(), count, g, r[F_C], r[F_H], r[F_W], r[F_PT], r[F_PL],
                         weights, field_ptr<const uint64_t>(r, F_ZERO_BITS), s.extra.data());
    if (zero_weights)
      bnas_xnor_zero_weights(s.words.data(), masked ? s.nonzero.data() : nullptr, g, r[F_C],
                             r[F_H], r[F_W], r[F_PT], r[F_PL],
                             field_ptr<const int64_t>(r, F_ZERO_LIST), r[F_ZERO_COUNT],
                             s.extra.data());
    extra = s.extra.data();
  }
  bnas_xnor_conv(s.words.data(), masked ? s.nonzero.data() : nullptr, g,
                 field_ptr<const uint64_t>(r, F_LAYOUT), field_ptr<const int32_t>(r, F_ROWCLASS),
                 field_ptr<const int32_t>(r, F_TABLE), extra, field_ptr<const float>(r, F_ALPHA),
                 out, isa, threads);
  e.bias = field_ptr<const float>(r, F_BIAS);
  e.fma = r[F_FMA] != 0;
  if (e.bias || e.scale || e.residual || e.act != ACT_NONE)
    finish_all(e, out, r[F_N] * r[F_O], r[F_O], r[F_HO] * r[F_WO], isa, threads);
  if (timed) binconv_ns += now_ns() - started;
  return switched;
}

// The fields of a task of bnas_xnor_binconvs (bnas.deploy.kernels.TASK names them, in this
// order): addresses as 64-bit integers, 0 for none.
enum TaskField {
  T_RECORD, T_X, T_SCALE, T_SHIFT, T_THRESH, T_OUT, T_SWITCHED, T_POST_SCALE, T_POST_SHIFT,
  T_RESIDUAL, T_ACT, T_PARAMS, T_FIELDS
};

}  // namespace

extern "C" {

// Counting binconv's time on (from zero) or off; seconds[0..1]: the packing's and the calls'
// sums so far (their ratio: the packing's share of the calls' time).
void bnas_xnor_timing(int on, double* seconds) {
  seconds[0] = 1e-9 * static_cast<double>(packing_ns.load());
  seconds[1] = 1e-9 * static_cast<double>(binconv_ns.load());
  if (on) packing_ns = binconv_ns = 0;
  counting = on != 0;
}

// The binary convolutions of one step of a network, independent of each other: task i is
// tasks[T_FIELDS i ..] (enum TaskField): the record, the input x, the packing's BatchNorm terms
// and threshold, the output, then the epilogue's BatchNorm terms, residual, activation and its
// parameters; each runs as binconv above, which sets `switched` to its result. With at least as
// many tasks as threads, several run at once, each on one thread (at batch 1 a task is too small
// to share well: the threads would meet at every packing and convolution); otherwise (fewer
// tasks than threads: some would idle) one after the other on all threads.
void bnas_xnor_binconvs(int64_t* tasks, int64_t count, int64_t masked_above, int isa,
                        int threads) {
  const auto run = [&](int64_t i, int inner) {
    int64_t* t = tasks + T_FIELDS * i;
    const auto f = [t](TaskField k) { return reinterpret_cast<const float*>(t[k]); };
    const Epilogue e{nullptr, f(T_POST_SCALE), f(T_POST_SHIFT), f(T_RESIDUAL),
                     static_cast<int>(t[T_ACT]), f(T_PARAMS), false};
    t[T_SWITCHED] = binconv(reinterpret_cast<int64_t*>(t[T_RECORD]), f(T_X), f(T_SCALE),
                            f(T_SHIFT), f(T_THRESH), e, masked_above,
                            reinterpret_cast<float*>(t[T_OUT]), isa, inner);
  };
  if (threads > 1 && count >= threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) run(i, 1);
  } else {
    for (int64_t i = 0; i < count; ++i) run(i, threads);
  }
}

}  // extern "C"

// Max pooling as torch's eval max_pool2d computes it (square window k, stride s, padding p with
// -inf, dilation 1, floor mode; a NaN in a window is the output). A maximum is exact, so any
// order of the comparisons gives torch's values (of two equal values 0 and -0 another may be
// kept); torch's own loop, branching per tap, is slow on a network's planes. Here each output
// row is the maximum over its window's input rows (a vector loop along the row), then over each
// output's columns.
namespace {

inline float nanmax(float a, float b) { return (a > b || a != a) ? a : b; }

void maxpool_plane(const float* src, int64_t h, int64_t w, int64_t k, int64_t s, int64_t p,
                   int64_t ho, int64_t wo, float* dst, float* rows) {
  for (int64_t oy = 0; oy < ho; ++oy) {
    const int64_t y0 = std::max<int64_t>(oy * s - p, 0), y1 = std::min(oy * s - p + k, h);
    for (int64_t xx = 0; xx < w; ++xx) rows[xx] = src[y0 * w + xx];
    for (int64_t y = y0 + 1; y < y1; ++y)
      for (int64_t xx = 0; xx < w; ++xx) rows[xx] = nanmax(src[y * w + xx], rows[xx]);
    // interior outputs (the whole window inside the row): a loop the compiler vectorises for
    // the common 3-wide windows; the border outputs: clipped windows
    const int64_t first = (p + s - 1) / s;
    const int64_t last = w - k + p < 0 ? 0 : std::min(wo, (w - k + p) / s + 1);
    for (int64_t ox = 0; ox < wo; ++ox) {
      if (ox == first && k == 3) {
        const float* r = rows + first * s - p;
        float* d = dst + oy * wo;
        for (int64_t q = first; q < last; ++q, r += s)
          d[q] = nanmax(r[2], nanmax(r[1], r[0]));
        ox = std::max(ox, last - 1);
        if (last > first) continue;
      }
      const int64_t x0 = std::max<int64_t>(ox * s - p, 0), x1 = std::min(ox * s - p + k, w);
      float m = rows[x0];
      for (int64_t xx = x0 + 1; xx < x1; ++xx) m = nanmax(rows[xx], m);
      dst[oy * wo + ox] = m;
    }
  }
}

}  // namespace

extern "C" {

// x: planes of h x w, out: planes of ho x wo (both contiguous float32).
void bnas_xnor_maxpool(const float* x, int64_t planes, int64_t h, int64_t w, int64_t k,
                       int64_t s, int64_t p, int64_t ho, int64_t wo, float* out, int threads) {
#pragma omp parallel num_threads(threads) if (planes * ho * wo > 4096)
  {
    std::vector<float> rows(w);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < planes; ++i)
      maxpool_plane(x + i * h * w, h, w, k, s, p, ho, wo, out + i * ho * wo, rows.data());
  }
}

}  // extern "C"
