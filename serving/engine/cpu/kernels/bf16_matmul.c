/* bf16 rows times bf16 weights in AVX512-BF16 dot products (serving/engine/cpu/kernels/bf16_matmul.py):
 * a bf16 model's decode-step matmuls on CPUs with AVX512-BF16 and no AMX (Zen 4/5, Cooper
 * Lake).
 *
 * Every output is one fp32 sum over the inputs in order, a pair at a time (vdpbf16ps adds
 * x[2i] * w[2i] + x[2i+1] * w[2i+1] to it: products exact in fp32), started from zero, then
 * the bias (fp32) and one rounding to the nearest even bf16. Which rows and columns a pass
 * computes together, and which thread runs them, only decides which sums share a weight load:
 * each sum's order of additions is the same, so a row's bits depend on its input row and the
 * weights alone, at any row count and thread count (batch invariance by construction).
 *
 * Weights are packed once (newsdesk_bf16_pack) as blocks of 16 output columns, each its inputs
 * in pairs ([n/16][k/2][16 columns][2]): one 64-byte load is a pair of inputs for 16 columns.
 * A pass runs up to 6 rows by 4 column blocks (24 fp32 sums in registers), so each weight load
 * serves up to 6 rows and each row's pair, broadcast, 4 blocks. At a decode step's 1-16 rows
 * the matmul reads its weights once from memory (the rest of a block's rows find it in L1/L2):
 * bound by memory bandwidth, which oneDNN's small-row gemm does not reach here. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define NEWSDESK_DPBF16 1
#include <immintrin.h>
#endif

/* w: (n, k) bf16, rows ldw apart, n % 16 == 0, k % 2 == 0 -> out: n * k elements of blocks */
void newsdesk_bf16_pack(const uint16_t *w, long ldw, uint16_t *out, int n, int k) {
    for (int nb = 0; nb < n / 16; nb++)
        for (int p = 0; p < k / 2; p++)
            for (int j = 0; j < 16; j++) {
                const uint16_t *row = w + (size_t)(nb * 16 + j) * ldw + 2 * p;
                uint16_t *to = out + ((size_t)nb * (k / 2) + p) * 32 + 2 * j;
                to[0] = row[0];
                to[1] = row[1];
            }
}

int newsdesk_bf16_ready(void) {
#if defined(NEWSDESK_DPBF16)
    return 1;
#else
    return 0;
#endif
}

#if defined(NEWSDESK_DPBF16)
#define MAX_ROWS 6
/* an input pair read as one 32-bit value: rows need not be 4-byte aligned */
typedef int32_t __attribute__((aligned(2), may_alias)) pair_t;
#define MAX_BLOCKS 4

/* rows [0, R) of x times column blocks [0, C) of w (blocks `stride` elements apart), sums over
 * the k/2 input pairs in order, plus the bias, rounded into out (rows ldo apart). R and C are
 * constants where it is inlined, so the sums stay in registers. */
static inline __attribute__((always_inline)) void pass(const uint16_t *x, long ldx,
                                                       const uint16_t *w, size_t stride,
                                                       const uint16_t *bias, uint16_t *out,
                                                       long ldo, int pairs, const int R,
                                                       const int C) {
    __m512 acc[MAX_ROWS][MAX_BLOCKS];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    const pair_t *xr[MAX_ROWS];
    for (int r = 0; r < R; r++) xr[r] = (const pair_t *)(x + (size_t)r * ldx);
    for (int p = 0; p < pairs; p++) {
        __m512bh wv[MAX_BLOCKS];
        for (int c = 0; c < C; c++)
            wv[c] = (__m512bh)_mm512_loadu_si512((const void *)(w + c * stride + (size_t)p * 32));
        for (int r = 0; r < R; r++) {
            const __m512bh xv = (__m512bh)_mm512_set1_epi32(xr[r][p]);
            for (int c = 0; c < C; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, wv[c]);
        }
    }
    for (int c = 0; c < C; c++) {
        const __m512 b =
            bias == NULL ? _mm512_setzero_ps()
                         : _mm512_castsi512_ps(_mm512_slli_epi32(
                               _mm512_cvtepu16_epi32(
                                   _mm256_loadu_si256((const __m256i *)(bias + 16 * c))),
                               16));
        for (int r = 0; r < R; r++)
            _mm256_storeu_si256((__m256i *)(out + (size_t)r * ldo + 16 * c),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(acc[r][c], b)));
    }
}

#define PASS_C(R, C) \
    case C: pass(x, ldx, w, stride, bias, out, ldo, pairs, R, C); break;
#define PASS_R(R) \
    case R: switch (blocks) { PASS_C(R, 1) PASS_C(R, 2) PASS_C(R, 3) PASS_C(R, 4) } break;

/* a pass of 1-6 rows by 1-4 column blocks, the sums in registers */
static void passes(const uint16_t *x, long ldx, const uint16_t *w, size_t stride,
                   const uint16_t *bias, uint16_t *out, long ldo, int pairs, int rows,
                   int blocks) {
    switch (rows) { PASS_R(1) PASS_R(2) PASS_R(3) PASS_R(4) PASS_R(5) PASS_R(6) }
}
#endif

/* x: (m, k) bf16, rows ldx apart; blocks: newsdesk_bf16_pack's of an (n, k) weight; bias: n
 * bf16 or NULL; out: (m, n) bf16. Returns 0, or -1 where it cannot run (no AVX512-BF16;
 * shapes). Threads take contiguous ranges of column blocks. */
int newsdesk_bf16_matmul(const uint16_t *x, long ldx, const uint16_t *blocks,
                         const uint16_t *bias, uint16_t *out, int m, int n, int k, int threads) {
#if defined(NEWSDESK_DPBF16)
    if (n % 16 != 0 || k % 2 != 0 || m <= 0) return -1;
    const int nblocks = n / 16, pairs = k / 2;
    const size_t stride = (size_t)pairs * 32; /* elements from one column block to the next */
    if (threads > nblocks) threads = nblocks;
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads)
    {
#if defined(_OPENMP)
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int t = 0, nt = 1;
#endif
        const int first = (int)((long)nblocks * t / nt), last = (int)((long)nblocks * (t + 1) / nt);
        /* a group of 4 column blocks at a time, for all rows: its first pass reads the
         * weights from memory, the others find them in cache. (One pass of up to 16 rows by
         * fewer blocks, or prefetching the next group meanwhile, measured slower.) */
        for (int b = first; b < last; b += MAX_BLOCKS) {
            const int count = last - b < MAX_BLOCKS ? last - b : MAX_BLOCKS;
            for (int r = 0; r < m; r += MAX_ROWS) {
                const int rows = m - r < MAX_ROWS ? m - r : MAX_ROWS;
                passes(x + (size_t)r * ldx, ldx, blocks + (size_t)b * stride, stride,
                       bias == NULL ? NULL : bias + 16 * b, out + (size_t)r * n + 16 * b, n,
                       pairs, rows, count);
            }
        }
    }
    return 0;
#else
    (void)x, (void)ldx, (void)blocks, (void)bias, (void)out, (void)m, (void)n, (void)k,
        (void)threads;
    return -1;
#endif
}
