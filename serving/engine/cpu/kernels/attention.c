/* The engine's attention on CPU over its slot KV cache (serving/engine/cpu/kernels/__init__.py builds
 * this file and calls it): decode steps (newsdesk_decode_attention) and one row's prefill or
 * rating pass (newsdesk_prefill_attention, further down).
 *
 * Keys and values are stored in bf16 for a bf16 model (it computes them in bf16, so bf16
 * storage is exact), widened to fp32 as they are read, or in fp32 for an fp32 model (`kv_bf16`
 * says which); every sum is fp32.
 *
 * Decode steps: one query position per row against the row's cache. What PyTorch's two
 * batched matmuls and softmax cost here is reading the cache as fp32 through small-M gemms
 * (~0.75 ms a layer at 8 rows); this reads half the bytes, once, and only the columns the row
 * attends (its mask), not the whole capacity. Batch invariance by construction: each
 * (row, kv head) is computed by one thread, in a fixed order over the row's own attended
 * columns and head dimensions, from the row's own data. No sum depends on how many rows there
 * are, which threads run them, or on columns the row does not attend (skipped, never read).
 *
 * Every sum is written as LANES partial sums (arrays in the portable code, one vector register
 * in the AVX-512 code) reduced by one fixed tree, so the compiler vectorizes the portable code
 * without reassociating anything (no -ffast-math) and both give the same bits (tested).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define NEWSDESK_AVX2 1
#endif

#define LANES 16
#define MAX_GROUPS 16
#define MAX_DIM 256

static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* exp(x) for x <= 0 (a score minus the row's maximum): Cephes' expf polynomial on
 * x - k*ln2, |.| <= ln2/2, times 2^k; within 2 ulp of libm. Below -87 it returns exp(-87)
 * (~1.6e-38, nothing beside the maximum's 1). Branch-free so that it vectorizes. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float k = __builtin_nearbyintf(x * 1.44269504088896341f);
    float r = __builtin_fmaf(k, -0.693359375f, x);
    r = __builtin_fmaf(k, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = __builtin_fmaf(p, r, 1.3981999507e-3f);
    p = __builtin_fmaf(p, r, 8.3334519073e-3f);
    p = __builtin_fmaf(p, r, 4.1665795894e-2f);
    p = __builtin_fmaf(p, r, 1.6666665459e-1f);
    p = __builtin_fmaf(p, r, 5.0000001201e-1f);
    p = __builtin_fmaf(p, r * r, r) + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float cache_at(const void *base, size_t i, int kv_bf16) {
    return kv_bf16 ? bf16_to_f32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

/* `n` cached values from element `offset` of `base` as fp32: widened into `scratch` (bf16),
 * or read in place (fp32) */
static inline const float *cache_row(const void *base, size_t offset, int n, int kv_bf16,
                                     float *scratch) {
    if (!kv_bf16) return (const float *)base + offset;
    const uint16_t *src = (const uint16_t *)base + offset;
    for (int d = 0; d < n; d++) scratch[d] = bf16_to_f32(src[d]);
    return scratch;
}

/* element `i` of a cache of either type, as a pointer */
static inline const void *kv_at(const void *base, size_t i, int kv_bf16) {
    if (kv_bf16) return (const uint16_t *)base + i;
    return (const float *)base + i;
}

static inline float tree_sum(float *lanes) {
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int j = 0; j < width; j++) lanes[j] += lanes[j + width];
    return lanes[0];
}

/* Each of `groups` rows of `count` scores becomes its softmax, in place. */
static void softmax(float *scores, int count, int groups) {
    float lanes[LANES];
    for (int g = 0; g < groups; g++) {
        float *s = scores + (size_t)g * count;
        float top = -__builtin_inff();
        for (int i = 0; i < count; i++) top = s[i] > top ? s[i] : top;
        for (int i = 0; i < count; i++) s[i] = exp_nonpositive(s[i] - top);
        for (int j = 0; j < LANES; j++) lanes[j] = 0.0f;
        int i = 0;
        for (; i + LANES <= count; i += LANES)
            for (int j = 0; j < LANES; j++) lanes[j] += s[i + j];
        for (int j = 0; i + j < count; j++) lanes[j] += s[i + j];
        const float total = tree_sum(lanes);
        for (int n = 0; n < count; n++) s[n] = s[n] / total;
    }
}

/* One (row, kv head): its `groups` query heads against its attended columns `cols`. */
static void item_generic(const float *qh, const void *kh, const void *vh, int kv_bf16,
                         const int *cols, int count, int groups, int dim, float scale,
                         float *scores, float *oh) {
    float scratch[MAX_DIM];
    float lanes[LANES];

    /* scores = q . k * scale, one attended column at a time */
    for (int i = 0; i < count; i++) {
        const float *row_f = cache_row(kh, (size_t)cols[i] * dim, dim, kv_bf16, scratch);
        for (int g = 0; g < groups; g++) {
            const float *qg = qh + (size_t)g * dim;
            for (int j = 0; j < LANES; j++) lanes[j] = qg[j] * row_f[j];
            for (int d0 = LANES; d0 < dim; d0 += LANES)
                for (int j = 0; j < LANES; j++)
                    lanes[j] = __builtin_fmaf(qg[d0 + j], row_f[d0 + j], lanes[j]);
            scores[(size_t)g * count + i] = tree_sum(lanes) * scale;
        }
    }
    softmax(scores, count, groups);

    /* out = p . v, one attended column at a time, each head dimension its own sum */
    float acc[MAX_GROUPS][MAX_DIM];
    for (int g = 0; g < groups; g++)
        for (int d = 0; d < dim; d++) acc[g][d] = 0.0f;
    for (int i = 0; i < count; i++) {
        const float *row_f = cache_row(vh, (size_t)cols[i] * dim, dim, kv_bf16, scratch);
        for (int g = 0; g < groups; g++) {
            const float p = scores[(size_t)g * count + i];
            for (int d = 0; d < dim; d++) acc[g][d] = __builtin_fmaf(p, row_f[d], acc[g][d]);
        }
    }
    for (int g = 0; g < groups; g++)
        memcpy(oh + (size_t)g * dim, acc[g], sizeof(float) * (size_t)dim);
}

#if defined(__AVX512F__)
static inline __m512 load_bf16x16(const uint16_t *p) {
    __m256i raw = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

/* 16 cached values from element `i` of `base`, as fp32 */
static inline __m512 load_cache16(const void *base, size_t i, int kv_bf16) {
    return kv_bf16 ? load_bf16x16((const uint16_t *)base + i)
                   : _mm512_loadu_ps((const float *)base + i);
}

/* The tree sums of 16 vectors (each what _mm512_reduce_add_ps, and tree_sum, make of it: the
 * same additions in the same order), lane c of the result v[c]'s. Transposing as it adds, it
 * takes 15 additions and 31 shuffles for all 16 where one reduction takes 4 and 4, in a chain:
 *   lanes j + j+8 of two vectors at a time (shuffle_f32x4 pairs their 256-bit halves),
 *   then j + j+4 of four, then j + j+2 and j + j+1 of eight (shuffle_ps within 128 bits),
 *   leaving vector k + 4m's sum in lane 4k + m, which one permute puts in place. */
static inline __m512 tree_sums16(const __m512 *v) {
    __m512 w[8], x[4], y[2];
    for (int i = 0; i < 8; i++) {
        const __m512 a = v[2 * i], b = v[2 * i + 1];
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int i = 0; i < 4; i++) {
        const __m512 a = w[2 * i], b = w[2 * i + 1];
        x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    for (int i = 0; i < 2; i++) {
        const __m512 a = x[2 * i], b = x[2 * i + 1];
        y[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(order, z);
}

/* Decode attention is bound by reading the cache (16 rows' caches of 30 layers: ~220 MB a
 * step, far past the caches): each column of keys or values is asked for AHEAD columns before
 * it is read, so that several are in flight beside the hardware's prefetch. */
#define AHEAD 32
static inline void prefetch_column(const void *base, int column, int kv_bf16) {
    const char *p = (const char *)base + (size_t)column * 64 * (kv_bf16 ? 2 : 4);
    _mm_prefetch(p, _MM_HINT_T0);
    _mm_prefetch(p + 64, _MM_HINT_T0);
    if (!kv_bf16) {
        _mm_prefetch(p + 128, _MM_HINT_T0);
        _mm_prefetch(p + 192, _MM_HINT_T0);
    }
}

/* The 16 lane partial sums of each of 3 queries' dot products with the cached key at element
 * `at` (before their tree sum) */
static inline void key_lanes(const __m512 qv[3][4], const void *kh, size_t at, int kv_bf16,
                             __m512 parts[3]) {
    const __m512 k0 = load_cache16(kh, at, kv_bf16), k1 = load_cache16(kh, at + 16, kv_bf16);
    const __m512 k2 = load_cache16(kh, at + 32, kv_bf16);
    const __m512 k3 = load_cache16(kh, at + 48, kv_bf16);
    for (int g = 0; g < 3; g++) {
        __m512 acc = _mm512_mul_ps(qv[g][0], k0);
        acc = _mm512_fmadd_ps(qv[g][1], k1, acc);
        acc = _mm512_fmadd_ps(qv[g][2], k2, acc);
        parts[g] = _mm512_fmadd_ps(qv[g][3], k3, acc);
    }
}

/* item_generic for 3 query heads per kv head and 64 dimensions (SmolLM2, Llama-3.2-1B's
 * shape class) with the query and the accumulators in registers: the same arithmetic in the
 * same order (lane j of a 16-wide register is lanes[j]; tree_sums16 and _mm512_reduce_add_ps
 * make tree_sum's tree), ~5x faster than what the compiler makes of the generic loops. The
 * scores of 16 columns at a time are reduced together (tree_sums16): 1.03-1.10x a decode
 * step's attention at 2-16 rows against one reduction per score, the same bits. */
static void item_3x64(const float *qh, const void *kh, const void *vh, int kv_bf16,
                      const int *cols, int count, float scale, float *scores, float *oh) {
    __m512 qv[3][4];
    for (int g = 0; g < 3; g++)
        for (int j = 0; j < 4; j++) qv[g][j] = _mm512_loadu_ps(qh + g * 64 + j * 16);
    const __m512 scale16 = _mm512_set1_ps(scale);
    int i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512 lanes[3][16], parts[3];
        for (int c = 0; c < 16; c++) {
            /* past the last key, the first values */
            const int next = i + c + AHEAD;
            if (next < count)
                prefetch_column(kh, cols[next], kv_bf16);
            else if (next - count < count)
                prefetch_column(vh, cols[next - count], kv_bf16);
            key_lanes(qv, kh, (size_t)cols[i + c] * 64, kv_bf16, parts);
            for (int g = 0; g < 3; g++) lanes[g][c] = parts[g];
        }
        for (int g = 0; g < 3; g++)
            _mm512_storeu_ps(scores + (size_t)g * count + i,
                             _mm512_mul_ps(tree_sums16(lanes[g]), scale16));
    }
    for (; i < count; i++) {
        __m512 parts[3];
        key_lanes(qv, kh, (size_t)cols[i] * 64, kv_bf16, parts);
        for (int g = 0; g < 3; g++)
            scores[(size_t)g * count + i] = _mm512_reduce_add_ps(parts[g]) * scale;
    }
    softmax(scores, count, 3);
    __m512 acc[3][4];
    for (int g = 0; g < 3; g++)
        for (int j = 0; j < 4; j++) acc[g][j] = _mm512_setzero_ps();
    for (int i = 0; i < count; i++) {
        if (i + AHEAD < count) prefetch_column(vh, cols[i + AHEAD], kv_bf16);
        const size_t at = (size_t)cols[i] * 64;
        const __m512 v0 = load_cache16(vh, at, kv_bf16), v1 = load_cache16(vh, at + 16, kv_bf16);
        const __m512 v2 = load_cache16(vh, at + 32, kv_bf16);
        const __m512 v3 = load_cache16(vh, at + 48, kv_bf16);
        for (int g = 0; g < 3; g++) {
            const __m512 p = _mm512_set1_ps(scores[(size_t)g * count + i]);
            acc[g][0] = _mm512_fmadd_ps(p, v0, acc[g][0]);
            acc[g][1] = _mm512_fmadd_ps(p, v1, acc[g][1]);
            acc[g][2] = _mm512_fmadd_ps(p, v2, acc[g][2]);
            acc[g][3] = _mm512_fmadd_ps(p, v3, acc[g][3]);
        }
    }
    for (int g = 0; g < 3; g++)
        for (int j = 0; j < 4; j++) _mm512_storeu_ps(oh + g * 64 + j * 16, acc[g][j]);
}
#endif

#if defined(NEWSDESK_AVX2)
/* Loops over rows and blocks unrolled before GCC decides what lives in memory: else it keeps
 * the sums in registers but also stores them back to the stack at every column (GCC 12) */
#define UNROLL _Pragma("GCC unroll 4")

/* 8 cached values from element `i` of `base`, as fp32 */
static inline __m256 load_cache8(const void *base, size_t i, int kv_bf16) {
    if (!kv_bf16) return _mm256_loadu_ps((const float *)base + i);
    const __m128i raw = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

/* tree_sum of 16 lanes held as lanes 0-7 (lo) and 8-15 (hi): the same additions in the same
 * order (j + 8, then j + 4, j + 2, j + 1) */
static inline float tree_sum8x2(__m256 lo, __m256 hi) {
    const __m256 s8 = _mm256_add_ps(lo, hi);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    return _mm_cvtss_f32(s1);
}

/* exp_nonpositive on 8 lanes: the same operations, so the same bits */
static inline __m256 exp_nonpositive8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-0.693359375f), x);
    r = _mm256_fmadd_ps(k, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* softmax (above) of `groups` rows of `count` scores: the same operations in the same order,
 * 8 lanes at a time (a 16-column block's partial sums as two registers; the columns past
 * `count` in the last block add exact zeros, where softmax adds nothing) */
static void softmax_avx2(float *scores, int count, int groups) {
    for (int g = 0; g < groups; g++) {
        float *s = scores + (size_t)g * count;
        float top = -__builtin_inff();
        for (int i = 0; i < count; i++) top = s[i] > top ? s[i] : top;
        const __m256 top8 = _mm256_set1_ps(top);
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        int i = 0;
        for (; i + LANES <= count; i += LANES) {
            const __m256 e0 = exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(s + i), top8));
            const __m256 e1 = exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(s + i + 8), top8));
            _mm256_storeu_ps(s + i, e0);
            _mm256_storeu_ps(s + i + 8, e1);
            lo = _mm256_add_ps(lo, e0);
            hi = _mm256_add_ps(hi, e1);
        }
        if (i < count) { /* the last, partial block */
            float tail[LANES] = {0};
            for (int j = 0; i + j < count; j++) tail[j] = exp_nonpositive(s[i + j] - top);
            for (int j = 0; i + j < count; j++) s[i + j] = tail[j];
            lo = _mm256_add_ps(lo, _mm256_loadu_ps(tail));
            hi = _mm256_add_ps(hi, _mm256_loadu_ps(tail + 8));
        }
        const __m256 total = _mm256_set1_ps(tree_sum8x2(lo, hi));
        int n = 0;
        for (; n + 8 <= count; n += 8)
            _mm256_storeu_ps(s + n, _mm256_div_ps(_mm256_loadu_ps(s + n), total));
        for (; n < count; n++) s[n] = s[n] / _mm256_cvtss_f32(total);
    }
}

/* item_generic for 3 query heads per kv head and 64 dimensions on AVX2: the same arithmetic in
 * the same order (the 16 partial sums of a score as two 8-wide registers) */
static void item_3x64(const float *qh, const void *kh, const void *vh, int kv_bf16,
                      const int *cols, int count, float scale, float *scores, float *oh) {
    for (int i = 0; i < count; i++) {
        const size_t at = (size_t)cols[i] * 64;
        __m256 k[8];
        for (int j = 0; j < 8; j++) k[j] = load_cache8(kh, at + 8 * j, kv_bf16);
        for (int g = 0; g < 3; g++) {
            const float *qg = qh + g * 64;
            __m256 lo = _mm256_mul_ps(_mm256_loadu_ps(qg), k[0]);
            __m256 hi = _mm256_mul_ps(_mm256_loadu_ps(qg + 8), k[1]);
            for (int j = 2; j < 8; j += 2) {
                lo = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8 * j), k[j], lo);
                hi = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8 * j + 8), k[j + 1], hi);
            }
            scores[(size_t)g * count + i] = tree_sum8x2(lo, hi) * scale;
        }
    }
    softmax_avx2(scores, count, 3);
    /* 3 x 4 accumulators a pass, a value vector at a time: with the 3 probabilities, 16
     * registers (one array per head: GCC stores a 2-D one back to the stack at every column) */
    for (int half = 0; half < 64; half += 32) {
        __m256 a0[4], a1[4], a2[4];
        UNROLL for (int j = 0; j < 4; j++) a0[j] = a1[j] = a2[j] = _mm256_setzero_ps();
        for (int i = 0; i < count; i++) {
            const size_t at = (size_t)cols[i] * 64 + half;
            const __m256 p0 = _mm256_set1_ps(scores[i]), p1 = _mm256_set1_ps(scores[count + i]),
                         p2 = _mm256_set1_ps(scores[2 * (size_t)count + i]);
            UNROLL for (int j = 0; j < 4; j++) {
                const __m256 v = load_cache8(vh, at + 8 * j, kv_bf16);
                a0[j] = _mm256_fmadd_ps(p0, v, a0[j]);
                a1[j] = _mm256_fmadd_ps(p1, v, a1[j]);
                a2[j] = _mm256_fmadd_ps(p2, v, a2[j]);
            }
        }
        UNROLL for (int j = 0; j < 4; j++) {
            _mm256_storeu_ps(oh + half + 8 * j, a0[j]);
            _mm256_storeu_ps(oh + 64 + half + 8 * j, a1[j]);
            _mm256_storeu_ps(oh + 128 + half + 8 * j, a2[j]);
        }
    }
}
#endif

/* Scratch memory the calling thread keeps between calls, grown as needed (`which`: one buffer
 * per use; 0 decode, 1 prefill's cache, 2 prefill's masks). For prefill's widened cache (~0.8
 * MB, once per layer) a fresh
 * allocation per call was mapped and faulted in every time; decode's smaller scratch measured
 * the same either way and shares the mechanism. NULL when it cannot grow. */
static void *thread_buffer(int which, size_t bytes) {
    static _Thread_local void *buffers[3];
    static _Thread_local size_t sizes[3];
    if (bytes > sizes[which]) {
        void *grown = realloc(buffers[which], bytes);
        if (grown == NULL) return NULL;
        buffers[which] = grown;
        sizes[which] = bytes;
    }
    return buffers[which];
}

/* q:    (rows, heads, dim) fp32, the step's queries
 * k, v: (slots, kv_heads, capacity, dim) bf16 or fp32 (kv_bf16) (rows <= slots; row i is
 *       slot i)
 * mask: (rows, capacity) bytes, nonzero where the row attends
 * out:  (rows, heads, dim) fp32
 * Returns 0, or -1 when a shape is outside what this kernel handles. */
int newsdesk_decode_attention(const float *q, const void *k, const void *v,
                              const uint8_t *mask, float *out, int rows, int heads, int kv_heads,
                              int capacity, int dim, float scale, int threads, int kv_bf16) {
    if (kv_heads <= 0 || heads % kv_heads != 0 || heads / kv_heads > MAX_GROUPS ||
        dim % LANES != 0 || dim > MAX_DIM)
        return -1;
    const int groups = heads / kv_heads;
    /* per row: its attended columns in order, and their count; per (row, kv head): scores */
    const size_t column_ints = (size_t)rows * capacity + rows;
    int *columns = (int *)thread_buffer(
        0, sizeof(int) * column_ints + sizeof(float) * (size_t)rows * heads * capacity);
    if (columns == NULL) return -1;
    int *counts = columns + (size_t)rows * capacity;
    float *scores_all = (float *)(columns + column_ints);
    for (int b = 0; b < rows; b++) {
        int c = 0;
        const uint8_t *m = mask + (size_t)b * capacity;
        int *cols = columns + (size_t)b * capacity;
        for (int l = 0; l < capacity; l++)
            if (m[l]) cols[c++] = l;
        counts[b] = c;
    }

#pragma omp parallel for schedule(static) num_threads(threads)
    for (int item = 0; item < rows * kv_heads; item++) {
        const int b = item / kv_heads, h = item % kv_heads;
        const size_t head_offset = ((size_t)b * kv_heads + h) * capacity * dim;
        const float *qh = q + ((size_t)b * heads + (size_t)h * groups) * dim;
        float *oh = out + ((size_t)b * heads + (size_t)h * groups) * dim;
        float *scores = scores_all + (size_t)item * groups * capacity;
        const int *cols = columns + (size_t)b * capacity;
#if defined(__AVX512F__) || defined(NEWSDESK_AVX2)
        if (groups == 3 && dim == 64) {
            item_3x64(qh, kv_at(k, head_offset, kv_bf16), kv_at(v, head_offset, kv_bf16), kv_bf16,
                      cols, counts[b], scale, scores, oh);
            continue;
        }
#endif
        item_generic(qh, kv_at(k, head_offset, kv_bf16), kv_at(v, head_offset, kv_bf16), kv_bf16,
                     cols, counts[b], groups, dim, scale, scores, oh);
    }
    return 0;
}

/* ---- prefill: many query positions of one row ---------------------------------------------
 *
 * The prompt's queries (or the rating pass's) against the row's keys: PyTorch's CPU flash
 * kernel runs this at a fraction of the machine's fp32 rate (3.7 ms a layer for a 436-token
 * prompt, and not faster with its causal skip). Here the row's keys and values are widened to
 * fp32 once per kv head (keys transposed, so that 16 columns fill a vector), and each tile of
 * TILE queries computes its scores over the columns any of them attends (causal: the tile's
 * last query's), its softmax, and its output, every sum in a fixed order: over the head
 * dimension for a score, over the columns for an output. A column a query does not attend
 * adds exact zeros to its sums, so a query's bits do not depend on the tile's other queries.
 */
#define TILE 8

static inline int attends(const uint8_t *mask, int q_len, int k_len, int i, int c) {
    return mask != NULL ? mask[(size_t)i * k_len + c] != 0 : c <= k_len - q_len + i;
}

/* One tile of up to TILE queries of one head (qs; outs: where each output goes) against
 * columns [0, span) of its kv head: keys transposed (kth, rows of k_pad), values (vfh).
 * attend: per query, which columns it attends (0 past span); s: TILE x k_pad scratch. */
static void tile_generic(const float *const *qs, int rows, const float *kth, const float *vfh,
                         int k_pad, int span, int dim, float scale, const uint8_t *attend,
                         int attend_stride, float *s, float *const *outs) {
    const int span_pad = (span + LANES - 1) / LANES * LANES;
    /* scores, 16 columns at a time: each a sum over the head dimension in order */
    for (int c0 = 0; c0 < span_pad; c0 += LANES) {
        float acc[TILE][LANES];
        for (int r = 0; r < TILE; r++)
            for (int j = 0; j < LANES; j++) acc[r][j] = qs[r][0] * kth[c0 + j];
        for (int d = 1; d < dim; d++)
            for (int r = 0; r < TILE; r++)
                for (int j = 0; j < LANES; j++)
                    acc[r][j] =
                        __builtin_fmaf(qs[r][d], kth[(size_t)d * k_pad + c0 + j], acc[r][j]);
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < LANES; j++) s[(size_t)r * k_pad + c0 + j] = acc[r][j] * scale;
    }
    /* softmax per query over the columns it attends (the others: exact zeros) */
    for (int r = 0; r < rows; r++) {
        float *si = s + (size_t)r * k_pad;
        const uint8_t *a = attend + (size_t)r * attend_stride;
        float top = -__builtin_inff();
        for (int c = 0; c < span_pad; c++)
            if (a[c] && si[c] > top) top = si[c];
        float lanes[LANES];
        for (int j = 0; j < LANES; j++) lanes[j] = 0.0f;
        for (int c0 = 0; c0 < span_pad; c0 += LANES)
            for (int j = 0; j < LANES; j++) {
                const float e = a[c0 + j] ? exp_nonpositive(si[c0 + j] - top) : 0.0f;
                si[c0 + j] = e;
                lanes[j] += e;
            }
        const float total = tree_sum(lanes);
        for (int c = 0; c < span_pad; c++) si[c] = si[c] / total;
    }
    /* outputs: each dimension a sum over the columns in order */
    for (int r = 0; r < rows; r++) {
        const float *pr = s + (size_t)r * k_pad;
        float o[MAX_DIM];
        for (int d = 0; d < dim; d++) o[d] = 0.0f;
        for (int c = 0; c < span; c++)
            for (int d = 0; d < dim; d++)
                o[d] = __builtin_fmaf(pr[c], vfh[(size_t)c * dim + d], o[d]);
        memcpy(outs[r], o, sizeof(float) * (size_t)dim);
    }
}

#if defined(__AVX512F__)
/* exp_nonpositive on 16 lanes: the same operations, so the same bits */
static inline __m512 exp_nonpositive16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(-0.693359375f), x);
    r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i bits = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

/* tile_generic's three phases with the sums in registers (same order, same bits) */
static void tile_avx512(const float *const *qs, int rows, const float *kth, const float *vfh,
                        int k_pad, int span, int dim, float scale, const uint8_t *attend,
                        int attend_stride, float *s, float *const *outs) {
    const int span_pad = (span + LANES - 1) / LANES * LANES;
    for (int c0 = 0; c0 < span_pad; c0 += LANES) {
        __m512 acc[TILE];
        const __m512 k0 = _mm512_loadu_ps(kth + c0);
        for (int r = 0; r < TILE; r++) acc[r] = _mm512_mul_ps(_mm512_set1_ps(qs[r][0]), k0);
        for (int d = 1; d < dim; d++) {
            const __m512 kd = _mm512_loadu_ps(kth + (size_t)d * k_pad + c0);
            for (int r = 0; r < TILE; r++)
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qs[r][d]), kd, acc[r]);
        }
        for (int r = 0; r < rows; r++)
            _mm512_storeu_ps(s + (size_t)r * k_pad + c0,
                             _mm512_mul_ps(acc[r], _mm512_set1_ps(scale)));
    }
    for (int r = 0; r < rows; r++) {
        float *si = s + (size_t)r * k_pad;
        const uint8_t *a = attend + (size_t)r * attend_stride;
        __m512 top = _mm512_set1_ps(-__builtin_inff());
        for (int c0 = 0; c0 < span_pad; c0 += LANES) {
            const __mmask16 m = _mm512_test_epi32_mask(
                _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(a + c0))),
                _mm512_set1_epi32(0xff));
            top = _mm512_mask_max_ps(top, m, top, _mm512_loadu_ps(si + c0));
        }
        const __m512 top_all = _mm512_set1_ps(_mm512_reduce_max_ps(top));
        __m512 total = _mm512_setzero_ps();
        for (int c0 = 0; c0 < span_pad; c0 += LANES) {
            const __mmask16 m = _mm512_test_epi32_mask(
                _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(a + c0))),
                _mm512_set1_epi32(0xff));
            const __m512 e = _mm512_maskz_mov_ps(
                m, exp_nonpositive16(_mm512_sub_ps(_mm512_loadu_ps(si + c0), top_all)));
            _mm512_storeu_ps(si + c0, e);
            total = _mm512_add_ps(total, e);
        }
        const __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(total));
        for (int c0 = 0; c0 < span_pad; c0 += LANES)
            _mm512_storeu_ps(si + c0, _mm512_div_ps(_mm512_loadu_ps(si + c0), sum));
    }
    /* 4 queries x 4 blocks of 16 dims a pass: 16 sums in registers, each value vector read
     * once for 4 queries (a query missing from the tile repeats the pass's last: not stored).
     * With the masks made once per tile: 1.09-1.14x a prompt's attention (300-436 queries),
     * the same bits. Tried and left: scores for 32 columns a pass (0.81x). */
    const int blocks = dim / LANES;
    for (int r0 = 0; r0 < rows; r0 += 4) {
        const int quad = rows - r0 < 4 ? rows - r0 : 4;
        const float *p[4];
        for (int r = 0; r < 4; r++) p[r] = s + (size_t)(r0 + (r < quad ? r : quad - 1)) * k_pad;
        for (int b0 = 0; b0 < blocks; b0 += 4) {
            const int nb = blocks - b0 < 4 ? blocks - b0 : 4;
            __m512 o[4][4];
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < 4; j++) o[r][j] = _mm512_setzero_ps();
            for (int c = 0; c < span; c++) {
                const float *vc = vfh + (size_t)c * dim + b0 * LANES;
                __m512 pc[4];
                for (int r = 0; r < 4; r++) pc[r] = _mm512_set1_ps(p[r][c]);
                for (int j = 0; j < nb; j++) {
                    const __m512 vv = _mm512_loadu_ps(vc + j * LANES);
                    for (int r = 0; r < 4; r++) o[r][j] = _mm512_fmadd_ps(pc[r], vv, o[r][j]);
                }
            }
            for (int r = 0; r < quad; r++)
                for (int j = 0; j < nb; j++)
                    _mm512_storeu_ps(outs[r0 + r] + (b0 + j) * LANES, o[r][j]);
        }
    }
}
#endif

#if defined(NEWSDESK_AVX2)
/* where 8 attend bytes are nonzero: all-ones lanes */
static inline __m256 attend8(const uint8_t *a) {
    const __m256i wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)a));
    return _mm256_castsi256_ps(
        _mm256_xor_si256(_mm256_cmpeq_epi32(wide, _mm256_setzero_si256()),
                         _mm256_set1_epi32(-1)));
}

/* Scores of up to 4 queries (qs) against 16 columns (kth: the first's transposed keys, rows
 * k_pad apart): 8 sums in registers, two key loads and 4 broadcasts per dimension */
static inline __attribute__((always_inline)) void scores_4x16(const float *const *qs, int n,
                                                              const float *kth, int k_pad,
                                                              int dim, float scale, float *s) {
    __m256 lo[4], hi[4];
    const float *q[4];
    UNROLL for (int r = 0; r < 4; r++) q[r] = qs[r < n ? r : 0];
    __m256 k0 = _mm256_loadu_ps(kth), k1 = _mm256_loadu_ps(kth + 8);
    UNROLL for (int r = 0; r < 4; r++) {
        const __m256 x = _mm256_set1_ps(q[r][0]);
        lo[r] = _mm256_mul_ps(x, k0);
        hi[r] = _mm256_mul_ps(x, k1);
    }
    for (int d = 1; d < dim; d++) {
        k0 = _mm256_loadu_ps(kth + (size_t)d * k_pad);
        k1 = _mm256_loadu_ps(kth + (size_t)d * k_pad + 8);
        UNROLL for (int r = 0; r < 4; r++) {
            const __m256 x = _mm256_set1_ps(q[r][d]);
            lo[r] = _mm256_fmadd_ps(x, k0, lo[r]);
            hi[r] = _mm256_fmadd_ps(x, k1, hi[r]);
        }
    }
    const __m256 sc = _mm256_set1_ps(scale);
    UNROLL for (int r = 0; r < 4; r++) if (r < n) {
        _mm256_storeu_ps(s + (size_t)r * k_pad, _mm256_mul_ps(lo[r], sc));
        _mm256_storeu_ps(s + (size_t)r * k_pad + 8, _mm256_mul_ps(hi[r], sc));
    }
}

/* Outputs of up to 3 queries (their probabilities p, rows k_pad apart) for NB (2 or 4) blocks
 * of 8 dimensions from dimension b0: each a sum over the columns in order */
static inline __attribute__((always_inline)) void outputs_3x32(
    const float *p, int k_pad, int n, const float *vfh, int dim, int span, float *const *outs,
    int b0, const int NB) {
    __m256 o0[4], o1[4], o2[4];
    /* a missing query reads the first's probabilities: summed, never stored */
    const float *p0 = p, *p1 = p + (size_t)(n > 1) * k_pad;
    const float *p2 = p + (size_t)(n > 2 ? 2 : 0) * k_pad;
    UNROLL for (int j = 0; j < NB; j++) o0[j] = o1[j] = o2[j] = _mm256_setzero_ps();
    for (int c = 0; c < span; c++) {
        const float *vc = vfh + (size_t)c * dim;
        const __m256 x = _mm256_set1_ps(p0[c]), y = _mm256_set1_ps(p1[c]),
                     z = _mm256_set1_ps(p2[c]);
        UNROLL for (int j = 0; j < NB; j++) {
            const __m256 vv = _mm256_loadu_ps(vc + j * 8);
            o0[j] = _mm256_fmadd_ps(x, vv, o0[j]);
            o1[j] = _mm256_fmadd_ps(y, vv, o1[j]);
            o2[j] = _mm256_fmadd_ps(z, vv, o2[j]);
        }
    }
    UNROLL for (int j = 0; j < NB; j++) {
        _mm256_storeu_ps(outs[0] + b0 + j * 8, o0[j]);
        if (n > 1) _mm256_storeu_ps(outs[1] + b0 + j * 8, o1[j]);
        if (n > 2) _mm256_storeu_ps(outs[2] + b0 + j * 8, o2[j]);
    }
}

/* tile_generic's three phases on AVX2 (same order, same bits): scores 4 queries by 16 columns
 * at a time (each column's sum is its own), the softmax's 16 partial sums as two registers,
 * outputs for three queries and 32 dimensions a pass */
static void tile_avx2(const float *const *qs, int rows, const float *kth, const float *vfh,
                      int k_pad, int span, int dim, float scale, const uint8_t *attend,
                      int attend_stride, float *s, float *const *outs) {
    const int span_pad = (span + LANES - 1) / LANES * LANES;
    for (int c0 = 0; c0 < span_pad; c0 += LANES)
        for (int r0 = 0; r0 < rows; r0 += 4)
            scores_4x16(qs + r0, rows - r0 < 4 ? rows - r0 : 4, kth + c0, k_pad, dim, scale,
                        s + (size_t)r0 * k_pad + c0);
    for (int r = 0; r < rows; r++) {
        float *si = s + (size_t)r * k_pad;
        const uint8_t *a = attend + (size_t)r * attend_stride;
        float top = -__builtin_inff();
        for (int c = 0; c < span_pad; c++)
            if (a[c] && si[c] > top) top = si[c];
        const __m256 top8 = _mm256_set1_ps(top);
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        for (int c0 = 0; c0 < span_pad; c0 += LANES) {
            const __m256 e0 = _mm256_and_ps(
                attend8(a + c0), exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(si + c0), top8)));
            const __m256 e1 = _mm256_and_ps(
                attend8(a + c0 + 8),
                exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(si + c0 + 8), top8)));
            _mm256_storeu_ps(si + c0, e0);
            _mm256_storeu_ps(si + c0 + 8, e1);
            lo = _mm256_add_ps(lo, e0);
            hi = _mm256_add_ps(hi, e1);
        }
        const __m256 sum = _mm256_set1_ps(tree_sum8x2(lo, hi));
        for (int c0 = 0; c0 < span_pad; c0 += 8)
            _mm256_storeu_ps(si + c0, _mm256_div_ps(_mm256_loadu_ps(si + c0), sum));
    }
    for (int r0 = 0; r0 < rows; r0 += 3) {
        const int n = rows - r0 < 3 ? rows - r0 : 3;
        for (int b0 = 0; b0 < dim; b0 += 32) { /* dim is a multiple of 16 */
            if (dim - b0 >= 32)
                outputs_3x32(s + (size_t)r0 * k_pad, k_pad, n, vfh + b0, dim, span, outs + r0, b0,
                             4);
            else
                outputs_3x32(s + (size_t)r0 * k_pad, k_pad, n, vfh + b0, dim, span, outs + r0, b0,
                             2);
        }
    }
}
#endif

/* ---- prefill in bf16 products: AMX tiles, or AVX512-BF16 dot products ----------------------
 *
 * The loops above compute a prompt's attention in fp32 FMAs (1.5 ms a layer for a 436-token
 * prompt on an AMX Xeon, ~1 ms on a Zen 5: a fifth to a third of its prefill). On a bf16
 * model the queries and keys are bf16 values already (its rotary embedding rounds them), so
 * their products are exact in fp32 whatever multiplies them: AMX tiles (~10x the fp32 rate)
 * or AVX512-BF16's vdpbf16ps (two products a lane, 2x). The scores are those exact products
 * summed in fp32 in the instruction's own order (AMX's: measured, no plain fp32 order
 * reproduces it; vdpbf16ps: a pair of dimensions at a time, in order). The softmax stays fp32;
 * for the second product each numerator e is split into two bf16 parts, hi = e rounded and lo
 * = (e - hi) rounded (e - hi is exact), and both are multiplied with the values: hi + lo keeps
 * ~16 of e's 24 bits where rounding it to bf16 (vLLM's and PyTorch's bf16 attention; tried
 * first on AMX) keeps 8: errors of ~1e-6 instead of ~1e-3 against exact attention, for ~7%
 * more time on AMX. Each output is divided by its numerators' fp32 sum. Not the loops' bits,
 * but within a few fp32 roundings of them (docs/benchmarks.md has the summaries' distance);
 * asked for by the caller (`mode`: cpu.amx_attention, cpu.bf16_attention).
 *
 * Batch invariance holds as in the loops: an output element depends on its query's row and
 * the key or value block only, the blocks are fixed by column (16 columns a key block, 32 a
 * value block, from column 0), every sum runs over them in order, and a column a query does
 * not attend (masked, or past its tile's span) adds an exact zero: a query's bits do not
 * depend on the other queries of its tile, nor on what masked columns hold. */
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define NEWSDESK_BF16_PAIRS 1
#define PAIR_ROWS 16 /* queries a tile */
#endif
#if defined(NEWSDESK_BF16_PAIRS) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && \
    defined(__linux__)
#define NEWSDESK_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

/* Linux gives a process AMX's tile state only once asked (ARCH_REQ_XCOMP_PERM, XTILEDATA);
 * PyTorch's oneDNN asks too, the answer is the process's. */
static int amx_permitted(void) {
    static int state; /* 0 not asked, 1 granted, -1 refused */
    if (state == 0) state = syscall(SYS_arch_prctl, 0x1023, 18) == 0 ? 1 : -1;
    return state == 1;
}

/* every tile 16 rows of 64 bytes: tiles 0-3 fp32 sums (16 x 16), 4-7 bf16 operands (16 x
 * 32, or 16 pairs of rows x 16 columns in the VNNI layout; three for the second operand: a
 * tile is not renamed, so a load into the one a product still reads waits for it) */
static void amx_configure(void) {
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.colsb[t] = 64;
        config.rows[t] = PAIR_ROWS;
    }
    _tile_loadconfig(&config);
}
#endif

#if defined(NEWSDESK_BF16_PAIRS)
/* what the caller asks of newsdesk_prefill_attention */
#define MODE_LOOPS 0
#define MODE_AMX 1
#define MODE_DPBF16 2

static inline __m512 bf16x16_to_f32(__m256i raw) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

/* the attend flags of columns [c0, c0 + 16) of query i as a lane mask (none at or past
 * `span`) */
static inline __mmask16 attend16(const uint8_t *mask, int q_len, int k_len, int i, int c0,
                                 int span) {
    const int n = span - c0 >= 16 ? 16 : (span - c0 > 0 ? span - c0 : 0);
    const __mmask16 in_span = (__mmask16)((1u << n) - 1u);
    if (mask == NULL) {
        const __m512i columns = _mm512_add_epi32(
            _mm512_set1_epi32(c0),
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
        return in_span &
               _mm512_cmple_epi32_mask(columns, _mm512_set1_epi32(k_len - q_len + i));
    }
    const __m128i flags = _mm_maskz_loadu_epi8(in_span, mask + (size_t)i * k_len + c0);
    return _mm512_test_epi32_mask(_mm512_cvtepu8_epi32(flags), _mm512_set1_epi32(0xff));
}

/* Per query of a tile (rows of `s`, raw scores, k_pad apart): its softmax's numerators over
 * the columns it attends (zero elsewhere, up to the last 64-column block) as two bf16 parts,
 * hi = e rounded and lo = the rest rounded (e - hi is exact in fp32), so that hi + lo keeps
 * ~16 of e's 24 bits: hi at pb + r * k_pad, lo PAIR_ROWS rows further; their fp32 sum in
 * totals[r]. A missing query (r >= rows) gets zeros. */
static void numerators(const float *s, int rows, int i0, int k_pad, int span, float scale,
                       const uint8_t *mask, int q_len, int k_len, uint16_t *pb,
                       float *totals) {
    const int blocks = (span + 63) / 64;
    const __m512 scale16 = _mm512_set1_ps(scale);
    for (int r = 0; r < PAIR_ROWS; r++) {
        uint16_t *hi = pb + (size_t)r * k_pad, *lo = hi + PAIR_ROWS * (size_t)k_pad;
        if (r >= rows) { /* a missing query: zero probabilities, never stored */
            memset(hi, 0, sizeof(uint16_t) * 64 * (size_t)blocks);
            memset(lo, 0, sizeof(uint16_t) * 64 * (size_t)blocks);
            totals[r] = 1.0f;
            continue;
        }
        const float *sr = s + (size_t)r * k_pad;
        __m512 top = _mm512_set1_ps(-__builtin_inff());
        for (int b = 0; b < (span + 15) / 16; b++) {
            const __mmask16 m = attend16(mask, q_len, k_len, i0 + r, 16 * b, span);
            top = _mm512_mask_max_ps(top, m, top, _mm512_mul_ps(_mm512_loadu_ps(sr + 16 * b),
                                                                scale16));
        }
        const __m512 top_all = _mm512_set1_ps(_mm512_reduce_max_ps(top));
        /* 64 columns a pass: four exponentials in flight (one is a chain of ~10 dependent
         * operations) */
        __m512 sums[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                          _mm512_setzero_ps()};
        for (int b = 0; b < blocks; b++) {
            for (int j = 0; j < 4; j++) {
                const int c0 = 64 * b + 16 * j;
                const __mmask16 m = attend16(mask, q_len, k_len, i0 + r, c0, span);
                const __m512 x =
                    _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(sr + c0), scale16), top_all);
                const __m512 e = _mm512_maskz_mov_ps(m, exp_nonpositive16(x));
                const __m256i e_hi = (__m256i)_mm512_cvtneps_pbh(e);
                const __m256i e_lo =
                    (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(e, bf16x16_to_f32(e_hi)));
                _mm256_storeu_si256((__m256i *)(hi + c0), e_hi);
                _mm256_storeu_si256((__m256i *)(lo + c0), e_lo);
                sums[j] = _mm512_add_ps(sums[j], e);
            }
        }
        const __m512 total =
            _mm512_add_ps(_mm512_add_ps(sums[0], sums[1]), _mm512_add_ps(sums[2], sums[3]));
        totals[r] = _mm512_reduce_add_ps(total);
    }
}
#endif

#if defined(NEWSDESK_AMX)
/* One head's tile of up to 16 queries (rows of `qb`, bf16, `dim` apart) against columns
 * [0, span) of its kv head's packed keys (kp) and values (vp), on AMX tiles. s: 16 x k_pad
 * fp32, pb: two 16 x k_pad bf16 (k_pad a multiple of 64); o: 16 x 64 fp32. Outputs to
 * outs[r]. */
static void tile_amx(const uint16_t *qb, int rows, int i0, const uint16_t *kp,
                     const uint16_t *vp, int k_pad, int span, int dim, float scale,
                     const uint8_t *mask, int q_len, int k_len, float *s, uint16_t *pb,
                     float *o, float *const *outs) {
    /* 64 columns a block: four score tiles, two value tiles (k_pad a multiple of 64) */
    const int chunks = dim / 32, blocks = (span + 63) / 64;
    /* scores of 64 columns at a time, four 16-column tiles summing q . k over the head
     * dimension 32 at a time (four sums in flight: one would wait for each product) */
    for (int b = 0; b < blocks; b++) {
        const uint16_t *kb = kp + (size_t)b * 4 * chunks * 512;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int c = 0; c < chunks; c++) {
            _tile_loadd(4, qb + 32 * c, dim * 2);
            _tile_loadd(5, kb + (size_t)c * 512, 64);
            _tile_loadd(6, kb + (size_t)(chunks + c) * 512, 64);
            _tile_loadd(7, kb + (size_t)(2 * chunks + c) * 512, 64);
            _tile_dpbf16ps(0, 4, 5);
            _tile_dpbf16ps(1, 4, 6);
            _tile_loadd(5, kb + (size_t)(3 * chunks + c) * 512, 64);
            _tile_dpbf16ps(2, 4, 7);
            _tile_dpbf16ps(3, 4, 5);
        }
        _tile_stored(0, s + 64 * b, k_pad * 4);
        _tile_stored(1, s + 64 * b + 16, k_pad * 4);
        _tile_stored(2, s + 64 * b + 32, k_pad * 4);
        _tile_stored(3, s + 64 * b + 48, k_pad * 4);
    }
    float totals[PAIR_ROWS];
    numerators(s, rows, i0, k_pad, span, scale, mask, q_len, k_len, pb, totals);
    /* outputs, 64 dimensions a pass: probabilities . values over the columns, 32 at a time */
    for (int d0 = 0; d0 < dim; d0 += 64) {
        const size_t block = (size_t)(dim / 16) * 512; /* one value tile column block */
        const uint16_t *vd = vp + (size_t)(d0 / 16) * 512;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int b = 0; b < 2 * blocks; b++) {
            const uint16_t *vb = vd + (size_t)b * block;
            _tile_loadd(4, pb + 32 * b, k_pad * 2);                              /* hi */
            _tile_loadd(5, pb + PAIR_ROWS * (size_t)k_pad + 32 * b, k_pad * 2);  /* lo */
            _tile_loadd(6, vb, 64);
            _tile_loadd(7, vb + 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(0, 5, 6);
            _tile_dpbf16ps(1, 5, 7);
            _tile_loadd(6, vb + 1024, 64);
            _tile_loadd(7, vb + 1536, 64);
            _tile_dpbf16ps(2, 4, 6);
            _tile_dpbf16ps(3, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, o, 256);
        _tile_stored(1, o + 16, 256);
        _tile_stored(2, o + 32, 256);
        _tile_stored(3, o + 48, 256);
        for (int r = 0; r < rows; r++) {
            const __m512 total = _mm512_set1_ps(totals[r]);
            for (int j = 0; j < 64; j += 16)
                _mm512_storeu_ps(outs[r] + d0 + j,
                                 _mm512_div_ps(_mm512_loadu_ps(o + r * 64 + j), total));
        }
    }
}
#endif

#if defined(NEWSDESK_BF16_PAIRS)
/* an input pair (two bf16) read as one 32-bit value, broadcast to 16 lanes */
typedef int32_t __attribute__((aligned(2), may_alias)) pair_t;
static inline __m512bh pair16(const uint16_t *p) {
    return (__m512bh)_mm512_set1_epi32(*(const pair_t *)p);
}

/* tile_amx's arithmetic in vdpbf16ps, 4 queries at a time (the same layouts): each score a
 * sum over the head dimension's pairs in order, each output one over the column pairs in
 * order, hi's product then lo's. Keys: 16-column blocks of [dim/2 pairs][16 columns][2];
 * values: [32-column block][16-dim block][16 column pairs][16 dims][2]. */
static void tile_dpbf16(const uint16_t *qb, int rows, int i0, const uint16_t *kp,
                        const uint16_t *vp, int k_pad, int span, int dim, float scale,
                        const uint8_t *mask, int q_len, int k_len, float *s, uint16_t *pb,
                        float *const *outs) {
    const int pairs = dim / 2, blocks = (span + 63) / 64;
    const int quads = (rows + 3) / 4;
    /* scores: 4 queries by 4 blocks of 16 columns a pass, 16 sums in registers, each key
     * load serving 4 queries and each query pair 4 blocks */
    for (int qd = 0; qd < quads; qd++) {
        const uint16_t *q4 = qb + (size_t)4 * qd * dim;
        for (int b = 0; b < 4 * blocks; b += 4) {
            const uint16_t *kb = kp + (size_t)b * 16 * dim;
            __m512 acc[4][4];
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
            for (int p = 0; p < pairs; p++) {
                __m512bh kv[4];
                for (int j = 0; j < 4; j++)
                    kv[j] = (__m512bh)_mm512_loadu_si512(
                        (const void *)(kb + (size_t)j * 16 * dim + (size_t)p * 32));
                for (int r = 0; r < 4; r++) {
                    const __m512bh qv = pair16(q4 + (size_t)r * dim + 2 * p);
                    for (int j = 0; j < 4; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], qv, kv[j]);
                }
            }
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < 4; j++)
                    _mm512_storeu_ps(s + (size_t)(4 * qd + r) * k_pad + 16 * (b + j), acc[r][j]);
        }
    }
    float totals[PAIR_ROWS];
    numerators(s, rows, i0, k_pad, span, scale, mask, q_len, k_len, pb, totals);
    /* outputs: 4 queries by 4 blocks of 16 dimensions a pass, over the column pairs up to the
     * last 64-column block (its numerators past the span are zeros) */
    const size_t vblock = (size_t)(dim / 16) * 512; /* a 32-column block of values */
    const uint16_t *lo = pb + PAIR_ROWS * (size_t)k_pad;
    for (int qd = 0; qd < quads; qd++) {
        for (int d0 = 0; d0 < dim; d0 += 64) {
            __m512 acc[4][4];
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
            for (int cp = 0; cp < 32 * blocks; cp++) {
                const uint16_t *vc =
                    vp + (size_t)(cp / 16) * vblock + (size_t)(d0 / 16) * 512 + (cp % 16) * 32;
                __m512bh vv[4];
                for (int j = 0; j < 4; j++)
                    vv[j] = (__m512bh)_mm512_loadu_si512((const void *)(vc + (size_t)j * 512));
                for (int r = 0; r < 4; r++) {
                    const size_t at = (size_t)(4 * qd + r) * k_pad + 2 * cp;
                    const __m512bh h = pair16(pb + at), l = pair16(lo + at);
                    for (int j = 0; j < 4; j++) {
                        acc[r][j] = _mm512_dpbf16_ps(acc[r][j], h, vv[j]);
                        acc[r][j] = _mm512_dpbf16_ps(acc[r][j], l, vv[j]);
                    }
                }
            }
            for (int r = 0; r < 4 && 4 * qd + r < rows; r++) {
                const __m512 total = _mm512_set1_ps(totals[4 * qd + r]);
                for (int j = 0; j < 4; j++)
                    _mm512_storeu_ps(outs[4 * qd + r] + d0 + 16 * j,
                                     _mm512_div_ps(acc[r][j], total));
            }
        }
    }
}

/* newsdesk_prefill_attention in bf16 products (a bf16 cache, dim a multiple of 64): AMX
 * tiles (MODE_AMX) or vdpbf16ps (MODE_DPBF16); -1 where it cannot run (no AMX permission,
 * scratch), and the caller takes the loops. */
static int prefill_pairs(const float *q, const uint16_t *k, const uint16_t *v, long head_stride,
                         const uint8_t *mask, float *out, int q_len, int k_len, int heads,
                         int kv_heads, int dim, float scale, int threads, int mode) {
#if defined(NEWSDESK_AMX)
    if (mode == MODE_AMX && !amx_permitted()) return -1;
#else
    if (mode == MODE_AMX) return -1;
#endif
    const int groups = heads / kv_heads;
    const int k_pad = (k_len + 63) / 64 * 64;
    /* per kv head: keys as 16-column blocks [16 columns][dim/2 pairs] of 32-bit words, word p
     * of column c at [p][c % 16] (AMX's score tiles, 32 dimensions a tile), values as
     * [32-column block][16-dim block][16 column pairs][16 dims][2] (its value tiles);
     * columns past k_len zero */
    const size_t head_size = (size_t)k_pad * dim;
    uint16_t *kp = (uint16_t *)thread_buffer(1, sizeof(uint16_t) * 2 * kv_heads * head_size);
    if (kp == NULL) return -1;
    uint16_t *vp = kp + (size_t)kv_heads * head_size;
    const int blocks = k_pad / 64;
    const int tiles = (q_len + PAIR_ROWS - 1) / PAIR_ROWS;
    int *spans = (int *)thread_buffer(2, sizeof(int) * (size_t)tiles);
    if (spans == NULL) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int item = 0; item < kv_heads * blocks; item++) {
        const int h = item / blocks, c_begin = (item % blocks) * 64;
        const uint16_t *kh = k + (size_t)h * head_stride, *vh = v + (size_t)h * head_stride;
        uint32_t *kw = (uint32_t *)(kp + (size_t)h * head_size + (size_t)c_begin * dim);
        for (int c = 0; c < 64; c++) {
            const uint32_t *src = (const uint32_t *)(kh + (size_t)(c_begin + c) * dim);
            uint32_t *dst = kw + (size_t)(c / 16) * (dim / 2) * 16 + c % 16;
            for (int p = 0; p < dim / 2; p++) dst[p * 16] = c_begin + c < k_len ? src[p] : 0;
        }
        /* values: two columns' 16-dimension runs interleaved, a row of a value tile */
        const __m512i pairs = _mm512_setr_epi32(
            0x00100000, 0x00110001, 0x00120002, 0x00130003, 0x00140004, 0x00150005, 0x00160006,
            0x00170007, 0x00180008, 0x00190009, 0x001a000a, 0x001b000b, 0x001c000c, 0x001d000d,
            0x001e000e, 0x001f000f);
        uint16_t *vb = vp + (size_t)h * head_size + (size_t)c_begin * dim;
        for (int c = 0; c < 64; c += 2) {
            const int c0 = c_begin + c;
            for (int d = 0; d < dim; d += 16) {
                const __m256i a = c0 < k_len ? _mm256_loadu_si256((const __m256i *)(
                                                   vh + (size_t)c0 * dim + d))
                                             : _mm256_setzero_si256();
                const __m256i b = c0 + 1 < k_len ? _mm256_loadu_si256((const __m256i *)(
                                                       vh + (size_t)(c0 + 1) * dim + d))
                                                 : _mm256_setzero_si256();
                const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
                _mm512_storeu_si512(vb + ((size_t)(c / 32) * (dim / 16) + d / 16) * 512 +
                                        (size_t)(c % 32) / 2 * 32,
                                    _mm512_permutexvar_epi16(pairs, both));
            }
        }
    }
    /* each tile's span: up to the causal limit of its last query, or under a mask, up to the
     * last column any of its queries attends (its last query first: usually the farthest) */
    for (int t = 0; t < tiles; t++) {
        const int i0 = t * PAIR_ROWS, rows = q_len - i0 < PAIR_ROWS ? q_len - i0 : PAIR_ROWS;
        int span = k_len - q_len + i0 + rows;
        if (mask != NULL) {
            span = 0;
            for (int r = rows - 1; r >= 0; r--)
                for (int c = k_len - 1; c >= span; c--)
                    if (mask[(size_t)(i0 + r) * k_len + c]) {
                        span = c + 1;
                        break;
                    }
        }
        spans[t] = span;
    }
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        const size_t scratch = sizeof(float) * PAIR_ROWS * (size_t)k_pad +
                               sizeof(uint16_t) * PAIR_ROWS * (2 * (size_t)k_pad + dim) +
                               sizeof(float) * PAIR_ROWS * 64;
        char *mem = (char *)malloc(scratch);
        if (mem == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#if defined(NEWSDESK_AMX)
        if (mem != NULL && mode == MODE_AMX) amx_configure();
#endif
        float *s = (float *)mem;
        uint16_t *pb = (uint16_t *)(s + PAIR_ROWS * (size_t)k_pad);
        uint16_t *qb = pb + 2 * PAIR_ROWS * (size_t)k_pad;
        float *o = (float *)(qb + PAIR_ROWS * (size_t)dim);
#pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < heads * tiles; item++) {
            if (mem == NULL) continue;
            const int head = item / tiles, i0 = (item % tiles) * PAIR_ROWS;
            const int rows = q_len - i0 < PAIR_ROWS ? q_len - i0 : PAIR_ROWS;
            const int span = spans[item % tiles];
            float *outs[PAIR_ROWS];
            for (int r = 0; r < PAIR_ROWS; r++) {
                uint16_t *qr = qb + (size_t)r * dim;
                if (r >= rows) {
                    memset(qr, 0, sizeof(uint16_t) * (size_t)dim);
                    continue;
                }
                const float *src = q + ((size_t)head * q_len + i0 + r) * dim;
                for (int d = 0; d < dim; d += 16)
                    _mm256_storeu_si256((__m256i *)(qr + d),
                                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + d)));
                outs[r] = out + ((size_t)(i0 + r) * heads + head) * dim;
            }
            const int kv = head / groups;
            const uint16_t *kh = kp + (size_t)kv * head_size, *vh = vp + (size_t)kv * head_size;
#if defined(NEWSDESK_AMX)
            if (mode == MODE_AMX) {
                tile_amx(qb, rows, i0, kh, vh, k_pad, span, dim, scale, mask, q_len, k_len, s,
                         pb, o, outs);
                continue;
            }
#endif
            (void)o;
            tile_dpbf16(qb, rows, i0, kh, vh, k_pad, span, dim, scale, mask, q_len, k_len, s,
                        pb, outs);
        }
#if defined(NEWSDESK_AMX)
        if (mem != NULL && mode == MODE_AMX) _tile_release();
#endif
        free(mem);
    }
    return failed ? -1 : 0;
}
#endif

/* q:    (heads, q_len, dim) fp32
 * k, v: the row's keys and values, bf16 or fp32 (kv_bf16), head h's column c at
 *       [h * head_stride + c * dim]
 * mask: (q_len, k_len) bytes, nonzero where query i attends column c; NULL: causal with the
 *       last query on the last column
 * out:  (q_len, heads, dim) fp32
 * mode: 0 the loops; 1 on AMX tiles, 2 in AVX512-BF16 dot products, where they run (a bf16
 *       cache, dim a multiple of 64; see above), else the loops */
int newsdesk_prefill_attention(const float *q, const void *k, const void *v, long head_stride,
                               const uint8_t *mask, float *out, int q_len, int k_len, int heads,
                               int kv_heads, int dim, float scale, int threads, int kv_bf16,
                               int mode) {
    if (kv_heads <= 0 || heads % kv_heads != 0 || dim % LANES != 0 || dim > MAX_DIM ||
        q_len <= 0 || k_len <= 0 || (mask == NULL && q_len > k_len))
        return -1;
#if defined(NEWSDESK_BF16_PAIRS)
    if ((mode == MODE_AMX || mode == MODE_DPBF16) && kv_bf16 && dim % 64 == 0 &&
        prefill_pairs(q, (const uint16_t *)k, (const uint16_t *)v, head_stride, mask, out,
                      q_len, k_len, heads, kv_heads, dim, scale, threads, mode) == 0)
        return 0;
#else
    (void)mode;
#endif
    const int groups = heads / kv_heads;
    const int k_pad = (k_len + LANES - 1) / LANES * LANES;
    /* per kv head: keys transposed (dim, k_pad) and values (k_len, dim), fp32 */
    const size_t k_size = (size_t)kv_heads * dim * k_pad;
    const size_t v_size = (size_t)kv_heads * k_len * dim;
    float *kt = (float *)thread_buffer(1, sizeof(float) * (k_size + v_size));
    if (kt == NULL) return -1;
    float *vf = kt + k_size;
    /* blocks of 64 columns, so that both threads work whatever the number of kv heads */
    const int blocks = (k_pad + 63) / 64;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int item = 0; item < kv_heads * blocks; item++) {
        const int h = item / blocks, c_begin = (item % blocks) * 64;
        const int c_end = c_begin + 64 < k_pad ? c_begin + 64 : k_pad;
        const size_t head = (size_t)h * head_stride;
        float *kth = kt + (size_t)h * dim * k_pad, *vfh = vf + (size_t)h * k_len * dim;
        for (int d = 0; d < dim; d++)
            for (int c = c_begin; c < c_end; c++)
                kth[(size_t)d * k_pad + c] =
                    c < k_len ? cache_at(k, head + (size_t)c * dim + d, kv_bf16) : 0.0f;
        for (int c = c_begin; c < (c_end < k_len ? c_end : k_len); c++)
            for (int d = 0; d < dim; d++)
                vfh[(size_t)c * dim + d] = cache_at(v, head + (size_t)c * dim + d, kv_bf16);
    }
    const int tiles = (q_len + TILE - 1) / TILE;
    /* Per tile, the columns it computes (its span) and which of them each of its queries
     * attends: the same for every head, so made once here, not once per head. */
    uint8_t *attends_all =
        (uint8_t *)thread_buffer(2, (size_t)tiles * TILE * k_pad + sizeof(int) * (size_t)tiles);
    if (attends_all == NULL) return -1;
    int *spans = (int *)(attends_all + (size_t)tiles * TILE * k_pad);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < tiles; t++) {
        const int i0 = t * TILE, rows = q_len - i0 < TILE ? q_len - i0 : TILE;
        /* up to the causal limit of its last query, or under an explicit mask, up to the last
         * column any of its queries attends */
        int span = k_len - q_len + i0 + rows;
        if (mask != NULL) {
            span = 0;
            for (int r = 0; r < rows; r++)
                for (int c = k_len - 1; c >= span; c--)
                    if (mask[(size_t)(i0 + r) * k_len + c]) {
                        span = c + 1;
                        break;
                    }
        }
        spans[t] = span;
        const int span_pad = (span + LANES - 1) / LANES * LANES;
        uint8_t *attend = attends_all + (size_t)t * TILE * k_pad;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < span_pad; c++)
                attend[(size_t)r * k_pad + c] =
                    (uint8_t)(c < span && attends(mask, q_len, k_len, i0 + r, c));
    }
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *s = (float *)malloc(sizeof(float) * (size_t)TILE * k_pad);
        if (s == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < heads * tiles; item++) {
            if (s == NULL) continue;
            const int head = item / tiles, tile = item % tiles, i0 = tile * TILE;
            const int rows = q_len - i0 < TILE ? q_len - i0 : TILE;
            const int kv = head / groups;
            const float *kth = kt + (size_t)kv * dim * k_pad;
            const float *vfh = vf + (size_t)kv * k_len * dim;
            const int span = spans[tile];
            const uint8_t *attend = attends_all + (size_t)tile * TILE * k_pad;
            const float *qs[TILE];
            float *outs[TILE];
            for (int r = 0; r < TILE; r++) { /* a missing query repeats the first: not used */
                qs[r] = q + ((size_t)head * q_len + i0 + (r < rows ? r : 0)) * dim;
                outs[r] = out + ((size_t)(i0 + (r < rows ? r : 0)) * heads + head) * dim;
            }
#if defined(__AVX512F__)
            (void)tile_generic;
            tile_avx512(qs, rows, kth, vfh, k_pad, span, dim, scale, attend, k_pad, s, outs);
#elif defined(NEWSDESK_AVX2)
            (void)tile_generic;
            tile_avx2(qs, rows, kth, vfh, k_pad, span, dim, scale, attend, k_pad, s, outs);
#else
            tile_generic(qs, rows, kth, vfh, k_pad, span, dim, scale, attend, k_pad, s, outs);
#endif
        }
        free(s);
    }
    return failed ? -1 : 0;
}

/* 1 where newsdesk_prefill_attention's mode 1 runs on AMX tiles here (built with AMX, and the
 * kernel lets this process use them), else 0 */
int newsdesk_amx_attention(void) {
#if defined(NEWSDESK_AMX)
    return amx_permitted();
#else
    return 0;
#endif
}

/* 1 where newsdesk_prefill_attention's mode 2 runs in AVX512-BF16 dot products here (built
 * with AVX512-BF16), else 0 */
int newsdesk_dpbf16_attention(void) {
#if defined(NEWSDESK_BF16_PAIRS)
    return 1;
#else
    return 0;
#endif
}
