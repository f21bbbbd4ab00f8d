/* bf16 rows times bf16 weights on AMX tiles (serving/engine/cpu/kernels/amx_matmul.py): a bf16 model's
 * decode-step matmuls on CPUs with AMX.
 *
 * oneDNN's AMX matmuls choose their blocking by the row count, so a row's bits move with the
 * number of rows beside it: a lone decode row has to step beside an idle one, and rows' rating
 * passes cannot share a matmul (serving/engine/cpu/lean_step.py). Here every output row is computed the
 * same way at any row count: its sums are the tile products of its own 16-row block over K,
 * 32 at a time in order, accumulated in fp32, then the bias (fp32) and one rounding to the
 * nearest even bf16; a block's rows do not mix (row i of a tile product reads row i of the
 * input only), and each output tile is computed by one thread. So a row's bits depend on its
 * input row and the weights alone: batch invariance by construction. (At 1-16 rows oneDNN's
 * AMX kernel computes the same: the same bits, measured on every SmolLM2 shape.)
 *
 * Weights are packed once (newsdesk_amx_pack) into tiles of 16 output columns by 32 inputs in
 * AMX's pair layout ([n/16][k/32][16 input pairs][16 columns][2]); a pass computes 2 row blocks
 * by 2 column tiles (tiles 0-3 the sums, 4-5 the rows, 6-7 the weights), so each weight tile
 * loaded serves two row blocks. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__linux__)
#define NEWSDESK_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* 1 where this build runs AMX tiles and Linux lets this process use them (ARCH_REQ_XCOMP_PERM
 * for XTILEDATA: asked once; PyTorch's oneDNN asks too), else 0 */
int newsdesk_amx_ready(void) {
#if defined(NEWSDESK_AMX)
    static int state; /* 0 not asked, 1 granted, -1 refused */
    if (state == 0) state = syscall(SYS_arch_prctl, 0x1023, 18) == 0 ? 1 : -1;
    return state == 1;
#else
    return 0;
#endif
}

/* w: (n, k) bf16, rows ldw apart, n % 16 == 0, k % 32 == 0 -> out: n * k elements of tiles */
void newsdesk_amx_pack(const uint16_t *w, long ldw, uint16_t *out, int n, int k) {
    const int chunks = k / 32;
    for (int nb = 0; nb < n / 16; nb++)
        for (int c = 0; c < chunks; c++) {
            uint16_t *tile = out + ((size_t)nb * chunks + c) * 512;
            for (int pair = 0; pair < 16; pair++)
                for (int j = 0; j < 16; j++) {
                    const uint16_t *row = w + (size_t)(nb * 16 + j) * ldw + c * 32 + 2 * pair;
                    tile[pair * 32 + j * 2] = row[0];
                    tile[pair * 32 + j * 2 + 1] = row[1];
                }
        }
}

#if defined(NEWSDESK_AMX)
static void configure(void) {
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.colsb[t] = 64;
        config.rows[t] = 16;
    }
    _tile_loadconfig(&config);
}

/* rows [r, r + valid) of a block's fp32 sums (16 columns, `ld` floats apart) plus the bias,
 * rounded to bf16 into out (rows `ldo` apart) */
static void store_rows(const float *sums, int ld, int valid, const uint16_t *bias,
                       uint16_t *out, long ldo) {
    const __m512 b =
        bias == NULL
            ? _mm512_setzero_ps()
            : _mm512_castsi512_ps(_mm512_slli_epi32(
                  _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)bias)), 16));
    for (int r = 0; r < valid; r++)
        _mm256_storeu_si256(
            (__m256i *)(out + (size_t)r * ldo),
            (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(_mm512_loadu_ps(sums + r * ld), b)));
}
#endif

/* x: (m, k) bf16, rows ldx apart; tiles: newsdesk_amx_pack's of an (n, k) weight; bias: n bf16
 * or NULL; out: (m, n) bf16. Returns 0, or -1 where it cannot run (no AMX; shapes). */
int newsdesk_amx_matmul(const uint16_t *x, long ldx, const uint16_t *tiles, const uint16_t *bias,
                        uint16_t *out, int m, int n, int k, int threads) {
#if defined(NEWSDESK_AMX)
    if (!newsdesk_amx_ready() || n % 32 != 0 || k % 32 != 0 || m <= 0) return -1;
    const int chunks = k / 32, blocks = (m + 15) / 16, pairs = n / 32;
    /* the last row block, when partial, from a zero-padded copy (a tile reads 16 rows) */
    const int tail = m % 16;
    uint16_t *padded = NULL;
    if (tail) {
        padded = (uint16_t *)calloc((size_t)16 * k, sizeof(uint16_t));
        if (padded == NULL) return -1;
        for (int r = 0; r < tail; r++)
            memcpy(padded + (size_t)r * k, x + (size_t)(m - tail + r) * ldx,
                   sizeof(uint16_t) * (size_t)k);
    }
#pragma omp parallel num_threads(threads)
    {
        configure();
        float sums[32 * 32];
#pragma omp for schedule(static)
        for (int p = 0; p < pairs; p++) {
            const uint16_t *w0 = tiles + (size_t)(2 * p) * chunks * 512;
            const uint16_t *w1 = w0 + (size_t)chunks * 512;
            for (int b = 0; b < blocks; b += 2) {
                const int two = b + 1 < blocks;
                const uint16_t *a0 = tail && b == blocks - 1 ? padded : x + (size_t)b * 16 * ldx;
                const uint16_t *a1 = !two                       ? a0
                                     : tail && b + 1 == blocks - 1 ? padded
                                                                   : a0 + (size_t)16 * ldx;
                const long lda0 = a0 == padded ? k : ldx, lda1 = a1 == padded ? k : ldx;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int c = 0; c < chunks; c++) {
                    _tile_loadd(4, a0 + c * 32, lda0 * 2);
                    _tile_loadd(6, w0 + (size_t)c * 512, 64);
                    _tile_loadd(7, w1 + (size_t)c * 512, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    if (two) {
                        _tile_loadd(5, a1 + c * 32, lda1 * 2);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                }
                _tile_stored(0, sums, 128);
                _tile_stored(1, sums + 16, 128);
                if (two) {
                    _tile_stored(2, sums + 16 * 32, 128);
                    _tile_stored(3, sums + 16 * 32 + 16, 128);
                }
                for (int half = 0; half < 1 + two; half++) {
                    const int first = (b + half) * 16;
                    const int valid = m - first < 16 ? m - first : 16;
                    for (int t = 0; t < 2; t++) {
                        const int column = (2 * p + t) * 16;
                        store_rows(sums + half * 16 * 32 + t * 16, 32, valid,
                                   bias == NULL ? NULL : bias + column,
                                   out + (size_t)first * n + column, n);
                    }
                }
            }
        }
        _tile_release();
    }
    free(padded);
    return 0;
#else
    (void)x, (void)ldx, (void)tiles, (void)bias, (void)out, (void)m, (void)n, (void)k,
        (void)threads;
    return -1;
#endif
}
