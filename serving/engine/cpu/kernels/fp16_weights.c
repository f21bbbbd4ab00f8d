/* A decode step's matmuls on a CPU without native bf16: fp32 rows times weights held in fp16.
 *
 * On such a CPU the model runs in fp32 and a decode step is bound by reading its weights: 540
 * MB of fp32 for SmolLM2-135M at every step, whatever the number of rows. Held in fp16 (the
 * engine rounds the fp32 weights to fp16 values at load, as OpenVINO's fp16 weights do), they
 * are half the bytes; widening an fp16 value to fp32 is exact and one instruction (F16C's
 * vcvtph2ps), and the arithmetic stays fp32. fp16 rather than bf16: 11 bits of mantissa
 * against 8, and measured on real news bf16-rounded weights changed 5 of 108 summaries, each
 * for the worse (docs/engine.md). oneDNN has no such matmul without native half types.
 *
 * y[m, n] = bias[n] + sum over k of x[m, k] * w[n, k], each output one chain of fused
 * multiply-adds over k in order, from zero, the bias added last. So a row's outputs do not
 * depend on the other rows, on how many there are or on the thread count (batch invariance by
 * construction), and the AVX-512, AVX2 and portable builds give the same bits (tested).
 *
 * Weights are packed once into panels of 32 output columns, [K][32] fp16 each: one 64-byte
 * line per k, read in order. A panel's rows are computed 8 at a time on AVX-512 (16
 * accumulators of 16 columns), up to 6 on AVX2; the panels are shared among the threads.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#include <immintrin.h>
#endif

#define PANEL 32
#define INLINE static inline __attribute__((always_inline))

/* IEEE half -> float, exact (the portable build's; the vector builds use vcvtph2ps) */
INLINE float widen_one(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, u;
    if (exponent == 0x1f) {
        u = sign | 0x7f800000u | (mantissa << 13); /* inf, nan */
    } else if (exponent != 0) {
        u = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        u = sign; /* zero */
    } else { /* subnormal: normalise */
        exponent = 113;
        while (!(mantissa & 0x400)) {
            mantissa <<= 1;
            exponent--;
        }
        u = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* w: (n, k) fp16 bits, rows `ldw` apart -> out: ceil(n / 32) panels of [k][32], columns past
 * n 0 */
void newsdesk_fp16w_pack(const uint16_t *w, long ldw, uint16_t *out, int n, int k) {
    const int panels = (n + PANEL - 1) / PANEL;
    for (int p = 0; p < panels; p++)
        for (int kk = 0; kk < k; kk++)
            for (int j = 0; j < PANEL; j++) {
                const int col = p * PANEL + j;
                out[((size_t)p * k + kk) * PANEL + j] = col < n ? w[(size_t)col * ldw + kk] : 0;
            }
}

/* One panel's `cols` outputs of row y (fp32 `acc` of 32), the bias added last */
INLINE void store_panel(const float *acc, const float *bias, float *y, int cols) {
    for (int j = 0; j < cols; j++) y[j] = bias ? acc[j] + bias[j] : acc[j];
}

#if defined(__AVX512F__)
#define ROW_CHUNK 8
INLINE __m512 widen16(const uint16_t *at) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)at));
}

/* ROWS (a constant where inlined) rows of x against one panel */
INLINE void panel_rows(const float *x, long ldx, const uint16_t *panel, const float *bias,
                       float *y, long ldy, int k, int cols, const int ROWS) {
    __m512 lo[ROW_CHUNK], hi[ROW_CHUNK];
    for (int r = 0; r < ROWS; r++) lo[r] = hi[r] = _mm512_setzero_ps();
    for (int kk = 0; kk < k; kk++) {
        const uint16_t *at = panel + (size_t)kk * PANEL;
        const __m512 w0 = widen16(at), w1 = widen16(at + 16);
        for (int r = 0; r < ROWS; r++) {
            const __m512 xr = _mm512_set1_ps(x[(size_t)r * ldx + kk]);
            lo[r] = _mm512_fmadd_ps(xr, w0, lo[r]);
            hi[r] = _mm512_fmadd_ps(xr, w1, hi[r]);
        }
    }
    float acc[PANEL];
    for (int r = 0; r < ROWS; r++) {
        _mm512_storeu_ps(acc, lo[r]);
        _mm512_storeu_ps(acc + 16, hi[r]);
        store_panel(acc, bias, y + (size_t)r * ldy, cols);
    }
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* 16 ymm registers. Up to 2 rows take a whole panel (2 x 4 accumulators, their broadcasts, a
 * weight): a panel line is widened once for both. From 3 rows on, the widening is what bounds
 * it (an AVX2 core converts and multiplies on the same ports), so each half-panel of 16
 * columns goes once over up to 6 rows (6 x 2 accumulators, 2 weights, a broadcast): 6 rows'
 * fused multiply-adds per 2 conversions instead of 2 per 4. The same chains either way. */
#define ROW_CHUNK 6
/* Loops over rows unrolled before GCC decides what lives in memory: else it keeps the
 * accumulators in registers but also stores them back to the stack at every k (seen with GCC
 * 12), a store per multiply-add */
#define UNROLL _Pragma("GCC unroll 6")
INLINE __m256 widen8(const uint16_t *at) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)at));
}

INLINE void panel_pair(const float *x, long ldx, const uint16_t *panel, const float *bias,
                       float *y, long ldy, int k, int cols, const int ROWS_) {
    const int ROWS = ROWS_ < 2 ? ROWS_ : 2; /* (a constant: the caller's other branch) */
    __m256 a0[2], a1[2], a2[2], a3[2];
    UNROLL for (int r = 0; r < ROWS; r++) a0[r] = a1[r] = a2[r] = a3[r] = _mm256_setzero_ps();
    for (int kk = 0; kk < k; kk++) {
        const uint16_t *at = panel + (size_t)kk * PANEL;
        __m256 xr[2];
        UNROLL for (int r = 0; r < ROWS; r++) xr[r] = _mm256_broadcast_ss(x + (size_t)r * ldx + kk);
        __m256 w = widen8(at);
        UNROLL for (int r = 0; r < ROWS; r++) a0[r] = _mm256_fmadd_ps(xr[r], w, a0[r]);
        w = widen8(at + 8);
        UNROLL for (int r = 0; r < ROWS; r++) a1[r] = _mm256_fmadd_ps(xr[r], w, a1[r]);
        w = widen8(at + 16);
        UNROLL for (int r = 0; r < ROWS; r++) a2[r] = _mm256_fmadd_ps(xr[r], w, a2[r]);
        w = widen8(at + 24);
        UNROLL for (int r = 0; r < ROWS; r++) a3[r] = _mm256_fmadd_ps(xr[r], w, a3[r]);
    }
    float acc[PANEL];
    UNROLL for (int r = 0; r < ROWS; r++) {
        _mm256_storeu_ps(acc, a0[r]);
        _mm256_storeu_ps(acc + 8, a1[r]);
        _mm256_storeu_ps(acc + 16, a2[r]);
        _mm256_storeu_ps(acc + 24, a3[r]);
        store_panel(acc, bias, y + (size_t)r * ldy, cols);
    }
}

/* ROWS rows against the 16 columns of a half-panel (`half`: the panel + 0 or 16) -> acc */
INLINE void half_rows(const float *x, long ldx, const uint16_t *half, float (*acc)[PANEL],
                      int k, const int ROWS) {
    __m256 lo[ROW_CHUNK], hi[ROW_CHUNK];
    UNROLL for (int r = 0; r < ROWS; r++) lo[r] = hi[r] = _mm256_setzero_ps();
    for (int kk = 0; kk < k; kk++) {
        const uint16_t *at = half + (size_t)kk * PANEL;
        const __m256 w0 = widen8(at), w1 = widen8(at + 8);
        UNROLL for (int r = 0; r < ROWS; r++) {
            const __m256 xr = _mm256_broadcast_ss(x + (size_t)r * ldx + kk);
            lo[r] = _mm256_fmadd_ps(xr, w0, lo[r]);
            hi[r] = _mm256_fmadd_ps(xr, w1, hi[r]);
        }
    }
    UNROLL for (int r = 0; r < ROWS; r++) {
        _mm256_storeu_ps(acc[r], lo[r]);
        _mm256_storeu_ps(acc[r] + 8, hi[r]);
    }
}

INLINE void panel_rows(const float *x, long ldx, const uint16_t *panel, const float *bias,
                       float *y, long ldy, int k, int cols, const int ROWS) {
    if (ROWS <= 2) {
        panel_pair(x, ldx, panel, bias, y, ldy, k, cols, ROWS);
        return;
    }
    float acc[ROW_CHUNK][PANEL];
    half_rows(x, ldx, panel, acc, k, ROWS);
    half_rows(x, ldx, panel + 16, (float (*)[PANEL])(&acc[0][16]), k, ROWS);
    UNROLL for (int r = 0; r < ROWS; r++) store_panel(acc[r], bias, y + (size_t)r * ldy, cols);
}
#else
#define ROW_CHUNK 1
/* the same chains one output at a time (fmaf: one rounding, as the vector FMA) */
INLINE void panel_rows(const float *x, long ldx, const uint16_t *panel, const float *bias,
                       float *y, long ldy, int k, int cols, const int ROWS) {
    (void)ldx;
    (void)ldy;
    (void)ROWS;
    float acc[PANEL];
    for (int j = 0; j < PANEL; j++) {
        float sum = 0.0f;
        for (int kk = 0; kk < k; kk++) sum = fmaf(x[kk], widen_one(panel[(size_t)kk * PANEL + j]), sum);
        acc[j] = sum;
    }
    store_panel(acc, bias, y, cols);
}
#endif

/* Row counts as constants, so each chunk's loops unroll into registers */
static void chunk(const float *x, long ldx, const uint16_t *panel, const float *bias, float *y,
                  long ldy, int k, int cols, int rows) {
    switch (rows) {
#if ROW_CHUNK >= 8
    case 8: panel_rows(x, ldx, panel, bias, y, ldy, k, cols, 8); break;
    case 7: panel_rows(x, ldx, panel, bias, y, ldy, k, cols, 7); break;
#endif
#if ROW_CHUNK >= 6
    case 6: panel_rows(x, ldx, panel, bias, y, ldy, k, cols, 6); break;
    case 5: panel_rows(x, ldx, panel, bias, y, ldy, k, cols, 5); break;
    case 4: panel_rows(x, ldx, panel, bias, y, ldy, k, cols, 4); break;
    case 3: panel_rows(x, ldx, panel, bias, y, ldy, k, cols, 3); break;
#endif
#if ROW_CHUNK >= 2
    case 2: panel_rows(x, ldx, panel, bias, y, ldy, k, cols, 2); break;
#endif
    default: panel_rows(x, ldx, panel, bias, y, ldy, k, cols, 1); break;
    }
}

/* x: (m, k) fp32, rows `ldx` apart; panels: newsdesk_fp16w_pack's of an (n, k) weight;
 * bias: (n,) fp32 or NULL; y: (m, n) fp32, rows `ldy` apart. Returns 0. */
int newsdesk_fp16w_matmul(const float *x, long ldx, const uint16_t *panels, const float *bias,
                          float *y, long ldy, int m, int n, int k, int threads) {
    const int count = (n + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int p = 0; p < count; p++) {
        const int cols = n - p * PANEL < PANEL ? n - p * PANEL : PANEL;
        const uint16_t *panel = panels + (size_t)p * k * PANEL;
        const float *b = bias ? bias + p * PANEL : NULL;
        for (int r = 0; r < m; r += ROW_CHUNK) {
            const int rows = m - r < ROW_CHUNK ? m - r : ROW_CHUNK;
            chunk(x + (size_t)r * ldx, ldx, panel, b, y + (size_t)r * ldy + p * PANEL, ldy, k,
                  cols, rows);
        }
    }
    return 0;
}
