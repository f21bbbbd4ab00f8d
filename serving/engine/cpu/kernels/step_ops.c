/* The elementwise work of a decode step around its matmuls, for serving/engine/cpu/lean_step.py: a
 * layer's residual add and RMSNorm (newsdesk_add_rmsnorm) and its rotary embedding with the
 * write of the step's keys and values into the slot cache (newsdesk_rope_store).
 *
 * In PyTorch these are ~30 small ops a layer, each a dispatch, an allocation and a pass over a
 * few KB: ~6 ms of a 34 ms decode step at 8 rows on the Zen 4 of 2026-12-01 (norms 2.8, cache
 * writes 1.8, rotary 1.4, adds 0.4). Here they are three calls a layer.
 *
 * Each gives PyTorch's bits, not just close ones: the same operations in the same order, each
 * rounded where PyTorch rounds. A bf16 op is computed in fp32 and rounded to the nearest even
 * bf16 (what PyTorch's CPU kernels do for every binary op); the product of two bf16 values is
 * exact in fp32, so only that final rounding matters. The one sum, the RMSNorm's sum of
 * squares, runs in the order of PyTorch's vectorized inner sum (ATen's SumKernel.cpp):
 * `lanes`-wide vectors, vector v added to partial sum v % 4 (levels of 16 groups for long
 * rows), the four partials folded in order, the scalar tail first, then the lanes in order.
 * Its vector width is PyTorch's (16 floats where its CPU capability is AVX-512, 8 where
 * AVX2), so the engine checks these functions against PyTorch's ops on the machine at load and
 * keeps PyTorch's ops where any bit differs (serving/engine/cpu/kernels/__init__.py). Batch invariance is
 * kept trivially: every output element is a function of its own row.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_LANES 16
#define LEVELS 4
#define ILP 4
#define LEVEL_POWER 4 /* ATen: max(4, ceil(log2(groups)) / 4), 4 below 2^20 groups */
#define MAX_HIDDEN 8192
#define MAX_DIM 1024
#define PARALLEL_ROWS 32 /* fewer rows (a decode step) run on the calling thread */
#define INLINE static inline __attribute__((always_inline))

INLINE float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

INLINE uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* fp32 to bf16 bits: round to nearest even, NaN to the quiet NaN (c10::BFloat16's conversion);
 * branch-free so that loops over it vectorize */
INLINE uint16_t to_bf16(float f) {
    const uint32_t u = float_bits(f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
}

INLINE float from_bf16(uint16_t x) { return bits_float((uint32_t)x << 16); }

/* a value as the model's dtype holds it (bf16: rounded; fp32: as it is) */
INLINE float rounded(float v, int bf16) { return bf16 ? from_bf16(to_bf16(v)) : v; }

/* n elements of the model's dtype from p + i, as fp32 */
INLINE void load_row(const void *p, size_t i, int n, int bf16, float *out) {
    if (bf16) {
        const uint16_t *src = (const uint16_t *)p + i;
        for (int d = 0; d < n; d++) out[d] = from_bf16(src[d]);
    } else {
        memcpy(out, (const float *)p + i, sizeof(float) * (size_t)n);
    }
}

/* n fp32 values to p + i in the model's dtype (values already rounded: exact) */
INLINE void store_row(void *p, size_t i, int n, int bf16, const float *in) {
    if (bf16) {
        uint16_t *dst = (uint16_t *)p + i;
        for (int d = 0; d < n; d++) dst[d] = to_bf16(in[d]);
    } else {
        memcpy((float *)p + i, in, sizeof(float) * (size_t)n);
    }
}

/* The sum of x[0..n) in the order of ATen's vectorized inner sum over LANES-wide vectors
 * (cascade_sum -> vectorized_inner_sum -> row_sum -> multi_row_sum): vector v goes to partial
 * v % ILP within groups of ILP vectors, group sums cascade up a level every 16 groups, the
 * levels and then the partials fold in order, leftover vectors join partial 0, and the scalar
 * tail is summed before the lanes. LANES is a constant of each instance (8 or 16), so the
 * lane loops compile to vector adds. */
#define DEFINE_ATEN_SUM(LANES)                                                                   \
    static float aten_sum_##LANES(const float *x, int n) {                                       \
        const int vectors = n / LANES, groups = vectors / ILP;                                   \
        const int step = 1 << LEVEL_POWER, mask = step - 1;                                      \
        float acc[LEVELS][ILP][LANES];                                                           \
        memset(acc, 0, sizeof acc);                                                              \
        int g = 0;                                                                               \
        while (g + step <= groups) {                                                             \
            for (int j = 0; j < step; j++, g++)                                                  \
                for (int k = 0; k < ILP; k++)                                                    \
                    for (int l = 0; l < LANES; l++)                                              \
                        acc[0][k][l] += x[(size_t)(ILP * g + k) * LANES + l];                    \
            for (int level = 1; level < LEVELS; level++) {                                       \
                for (int k = 0; k < ILP; k++)                                                    \
                    for (int l = 0; l < LANES; l++) {                                            \
                        acc[level][k][l] += acc[level - 1][k][l];                                \
                        acc[level - 1][k][l] = 0.0f;                                             \
                    }                                                                            \
                if ((g & (mask << (level * LEVEL_POWER))) != 0) break;                           \
            }                                                                                    \
        }                                                                                        \
        for (; g < groups; g++)                                                                  \
            for (int k = 0; k < ILP; k++)                                                        \
                for (int l = 0; l < LANES; l++)                                                  \
                    acc[0][k][l] += x[(size_t)(ILP * g + k) * LANES + l];                        \
        for (int level = 1; level < LEVELS; level++)                                             \
            for (int k = 0; k < ILP; k++)                                                        \
                for (int l = 0; l < LANES; l++) acc[0][k][l] += acc[level][k][l];                \
        for (int v = groups * ILP; v < vectors; v++)                                             \
            for (int l = 0; l < LANES; l++) acc[0][0][l] += x[(size_t)v * LANES + l];            \
        for (int k = 1; k < ILP; k++)                                                            \
            for (int l = 0; l < LANES; l++) acc[0][0][l] += acc[0][k][l];                        \
        float total = 0.0f;                                                                      \
        for (int i = vectors * LANES; i < n; i++) total += x[i];                                 \
        for (int l = 0; l < LANES; l++) total += acc[0][0][l];                                   \
        return total;                                                                            \
    }
DEFINE_ATEN_SUM(4)
DEFINE_ATEN_SUM(8)
DEFINE_ATEN_SUM(16)

static float aten_sum(const float *x, int n, int lanes) {
    return lanes == 16 ? aten_sum_16(x, n) : lanes == 8 ? aten_sum_8(x, n) : aten_sum_4(x, n);
}

static int known_lanes(int lanes) { return lanes == 4 || lanes == 8 || lanes == 16; }

/* out[r] = the mean of the squares of row r of x ((rows, n) fp32), as PyTorch's
 * x.pow(2).mean(-1) sums them with `lanes`-wide vectors: how the engine finds PyTorch's width */
int newsdesk_mean_square(const float *x, float *out, int rows, int n, int lanes) {
    if (!known_lanes(lanes) || n <= 0 || n > MAX_HIDDEN) return -1;
    float squares[MAX_HIDDEN];
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < n; i++) squares[i] = x[(size_t)r * n + i] * x[(size_t)r * n + i];
        out[r] = aten_sum(squares, n, lanes) / (float)n;
    }
    return 0;
}

/* one row of newsdesk_add_rmsnorm; `bf16` a constant where it is inlined */
INLINE void add_rmsnorm_row(const void *x, const void *delta, const float *weight,
                            void *residual_out, void *normed_out, size_t base, int hidden,
                            float eps, int lanes, int bf16) {
    float h[MAX_HIDDEN], other[MAX_HIDDEN];
    load_row(x, base, hidden, bf16, h);
    if (delta != NULL) {
        load_row(delta, base, hidden, bf16, other);
        for (int i = 0; i < hidden; i++) h[i] = rounded(h[i] + other[i], bf16);
        if (residual_out != NULL) store_row(residual_out, base, hidden, bf16, h);
    }
    for (int i = 0; i < hidden; i++) other[i] = h[i] * h[i];
    const float variance = aten_sum(other, hidden, lanes) / (float)hidden;
    const float inverse = 1.0f / sqrtf(variance + eps);
    for (int i = 0; i < hidden; i++) other[i] = rounded(weight[i] * rounded(h[i] * inverse, bf16), bf16);
    store_row(normed_out, base, hidden, bf16, other);
}

/* For each of `rows` rows of `hidden` elements (the model's dtype):
 *   h = x + delta, rounded (delta NULL: h = x), written to residual_out (with delta)
 *   normed_out = weight * round(h * 1 / sqrt(sum(h * h) / hidden + eps)), rounded
 * i.e. `residual + delta` then transformers' LlamaRMSNorm, bit for bit. Many rows (a prompt)
 * are shared among `threads` threads; each row is computed by one, the same way.
 * Returns 0, or -1 when `lanes` or `hidden` is outside what it handles. */
int newsdesk_add_rmsnorm(const void *x, const void *delta, const void *weight, void *residual_out,
                         void *normed_out, int rows, int hidden, float eps, int lanes, int bf16,
                         int threads) {
    if (!known_lanes(lanes) || hidden <= 0 || hidden > MAX_HIDDEN) return -1;
    float w[MAX_HIDDEN];
    load_row(weight, 0, hidden, bf16, w);
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
    for (int r = 0; r < rows; r++) {
        const size_t base = (size_t)r * hidden;
        if (bf16)
            add_rmsnorm_row(x, delta, w, residual_out, normed_out, base, hidden, eps, lanes, 1);
        else
            add_rmsnorm_row(x, delta, w, residual_out, normed_out, base, hidden, eps, lanes, 0);
    }
    return 0;
}

/* transformers' apply_rotary_pos_emb on one head's `dim` values x (fp32, exact copies of the
 * model's dtype): x * cos + rotate_half(x) * sin, each product and the sum rounded to the
 * model's dtype; rotate_half(x) = (-x[half:], x[:half]). */
INLINE void rotate(const float *x, const float *cos, const float *sin, int dim, int bf16,
                   float *out) {
    const int half = dim / 2;
    for (int d = 0; d < half; d++)
        out[d] = rounded(rounded(x[d] * cos[d], bf16) + rounded(-x[d + half] * sin[d], bf16), bf16);
    for (int d = half; d < dim; d++)
        out[d] = rounded(rounded(x[d] * cos[d], bf16) + rounded(x[d - half] * sin[d], bf16), bf16);
}

/* one position of newsdesk_rope_store; `bf16` a constant where it is inlined */
INLINE void rope_store_position(const void *q, const void *k, const void *v, size_t q_at,
                                size_t k_at, size_t v_at, const void *cos, const void *sin,
                                size_t trig, float *q_out, long q_out_head, void *k_cache,
                                void *v_cache, size_t slot_index, int64_t column, int heads,
                                int kv_heads, int dim, int capacity, int bf16) {
    float c[MAX_DIM], s[MAX_DIM], x[MAX_DIM], turned[MAX_DIM];
    load_row(cos, trig, dim, bf16, c);
    load_row(sin, trig, dim, bf16, s);
    for (int h = 0; h < heads; h++) {
        load_row(q, q_at + (size_t)h * dim, dim, bf16, x);
        rotate(x, c, s, dim, bf16, q_out + (size_t)h * q_out_head);
    }
    const size_t width = bf16 ? sizeof(uint16_t) : sizeof(float);
    for (int h = 0; h < kv_heads; h++) {
        const size_t at = ((slot_index * kv_heads + h) * capacity + (size_t)column) * dim;
        load_row(k, k_at + (size_t)h * dim, dim, bf16, x);
        rotate(x, c, s, dim, bf16, turned);
        store_row(k_cache, at, dim, bf16, turned);
        memcpy((char *)v_cache + at * width, (const char *)v + (v_at + (size_t)h * dim) * width,
               width * (size_t)dim);
    }
}

/* The queries, keys and values of a layer at `rows` positions: one per row of a decode step
 * (slot_step 1: position b is row b's, in slot b), or a prompt's or rating pass's tokens of
 * one row (slot_step 0: every position in slot `first_slot`).
 * q: (rows, heads * dim), k and v: (rows, kv_heads * dim), rows `q_stride`, `k_stride`,
 *    `v_stride` elements apart (columns of one packed q/k/v matmul, or three tensors)
 * cos, sin: (rows, dim), the positions' rotary tables
 * q_out: fp32, position b's head h at element b * q_out_row + h * q_out_head ((rows, heads,
 *        dim) for a decode step's attention, (heads, rows, dim) for a prompt's): the rotated
 *        queries, rounded to the model's dtype first as attention reads them
 * k_cache, v_cache: (slots, kv_heads, capacity, dim): position b's rotated keys and its values
 *        go to column columns[b] of slot first_slot + b * slot_step (the slot cache's update)
 * Many positions (a prompt) are shared among `threads` threads, each computed by one.
 * Returns 0, or -1 when `dim` is outside what it handles. */
int newsdesk_rope_store(const void *q, const void *k, const void *v, long q_stride, long k_stride,
                        long v_stride, const void *cos, const void *sin, float *q_out,
                        long q_out_row, long q_out_head, void *k_cache, void *v_cache,
                        const int64_t *columns, int rows, int first_slot, int slot_step, int heads,
                        int kv_heads, int dim, int capacity, int bf16, int threads) {
    if (dim <= 0 || dim % 2 != 0 || dim > MAX_DIM) return -1;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
    for (int b = 0; b < rows; b++) {
        const size_t slot_index = (size_t)first_slot + (size_t)b * slot_step;
        float *out = q_out + (size_t)b * q_out_row;
        const size_t q_at = (size_t)b * q_stride, k_at = (size_t)b * k_stride;
        const size_t v_at = (size_t)b * v_stride, trig = (size_t)b * dim;
        if (bf16)
            rope_store_position(q, k, v, q_at, k_at, v_at, cos, sin, trig, out, q_out_head,
                                k_cache, v_cache, slot_index, columns[b], heads, kv_heads, dim,
                                capacity, 1);
        else
            rope_store_position(q, k, v, q_at, k_at, v_at, cos, sin, trig, out, q_out_head,
                                k_cache, v_cache, slot_index, columns[b], heads, kv_heads, dim,
                                capacity, 0);
    }
    return 0;
}

/* ---- SiLU(gate) * up of a bf16 model's MLP ---------------------------------------------------
 *
 * PyTorch computes the two as two passes over the rows (F.silu, then the product), each
 * rounded to bf16: ~0.25 ms a layer of a 436-token prompt here. SiLU of a bf16 value has one
 * bf16 result, so the engine builds the 65536-entry table of PyTorch's own F.silu at load
 * (`silu`: PyTorch's bits by construction, whatever its exp), and this reads it: out =
 * bf16(float(silu[gate]) * float(up)), the product exact in fp32 and rounded to nearest even
 * as ATen's vectorized bf16 ops round (a NaN to 0xffff). */
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#endif

INLINE uint16_t to_bf16_vectorized(float f) {
    return f != f ? (uint16_t)0xffffu : to_bf16(f);
}

/* gate, up: (rows, n) bf16, rows `ld` elements apart (the halves of one gate/up matmul);
 * silu: 65536 + 2 entries (the vector loop reads 4 bytes at an entry); out: (rows, n) */
void newsdesk_silu_mul(const uint16_t *silu, const uint16_t *gate, const uint16_t *up, long ld,
                       uint16_t *out, int rows, int n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows >= PARALLEL_ROWS)
    for (int r = 0; r < rows; r++) {
        const uint16_t *g = gate + (size_t)r * ld, *u = up + (size_t)r * ld;
        uint16_t *o = out + (size_t)r * n;
        int i = 0;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
        for (; i + 16 <= n; i += 16) {
            const __m512i index =
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(g + i)));
            const __m512i s = _mm512_i32gather_epi32(index, (const void *)silu, 2);
            const __m512 p = _mm512_mul_ps(
                _mm512_castsi512_ps(_mm512_slli_epi32(s, 16)),
                _mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(u + i))), 16)));
            /* vcvtneps2bf16 rounds to nearest even, but flushes subnormals to zero and keeps
             * a NaN's payload: such lanes (rare) are rounded one at a time */
            const __mmask16 odd =
                _mm512_cmp_ps_mask(_mm512_abs_ps(p), _mm512_set1_ps(1.17549435e-38f),
                                   _CMP_NGE_UQ) &
                _mm512_cmp_ps_mask(p, _mm512_setzero_ps(), _CMP_NEQ_UQ);
            _mm256_storeu_si256((__m256i *)(o + i), (__m256i)_mm512_cvtneps_pbh(p));
            if (odd)
                for (int j = 0; j < 16; j++)
                    if (odd >> j & 1)
                        o[i + j] = to_bf16_vectorized(from_bf16(silu[g[i + j]]) *
                                                      from_bf16(u[i + j]));
        }
#endif
        for (; i < n; i++) o[i] = to_bf16_vectorized(from_bf16(silu[g[i]]) * from_bf16(u[i]));
    }
}
