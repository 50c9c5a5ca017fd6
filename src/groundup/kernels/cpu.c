/* groundup's fused CPU kernels: float32, written as plain loops that the compiler vectorises.
 *
 * Each kernel does in one pass over memory what PyTorch's eager mode does in several, and each has a
 * plain-PyTorch twin that the tests compare it with (groundup/kernels/__init__.py says which).
 * Built on first use with the system C compiler (gcc -O3 -march=native -fopenmp), loaded with ctypes.
 *
 *   gelu_forward / gelu_backward     GELU, tanh form, of x + bias: 0.5·z·(1 + tanh(u)) = z·σ(2u),
 *                                    u = √(2/π)·(z + 0.044715·z³)
 *   layer_norm_forward / _backward   layer norm over each row, with dγ and dβ
 *   attention_forward / _backward    causal softmax(Q Kᵀ · scale) V per (batch, head), Q and K
 *                                    optionally rotated (RoPE); the backward pass by hand, keeping
 *                                    only the log-sum-exp of each row
 *   matmul, linear_backward          C = A·B + bias, any strides: the linear layers, forward and backward
 *   sum_of_squares, scale, adamw_step   over many tensors in one call: gradient norm, clipping, AdamW
 *
 * Work is split over (batch, head) pairs or element ranges with a static schedule, so every output
 * element is always computed by the same loop in the same order: results do not depend on the
 * number of threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* e^x for x in [-87, 88] to about 2 ulp, written so that it vectorises (no libm call):
 * e^x = 2^n · e^r with n = round(x / ln 2), r = x − n·ln 2 in [−ln2/2, ln2/2], e^r by its Taylor
 * series to r⁶ (relative error < 2e-7). */
static inline float exp_fast(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x; /* (fminf/fmaxf would not vectorise) */
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f; /* ln 2 in two parts */
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    int32_t bits = ((int32_t)n + 127) << 23; /* 2^n as a float's exponent field */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#define GELU_K0 0.7978845608028654f /* √(2/π) */
#define GELU_K1 0.044715f

/* σ(2u) = 1 / (1 + e^(−2u)); exp_fast caps its argument, so this is finite for every x. */
static inline float gelu_sigma(float x) {
    float u = GELU_K0 * (x + GELU_K1 * x * x * x);
    return 1.0f / (1.0f + exp_fast(-2.0f * u));
}

/* y = GELU(x + b), x (rows × cols), b (cols) or NULL: the feed-forward layer's bias comes in here
 * instead of in the matmul (which would write the output once more just to add it). */
void gelu_forward(const float *x, const float *bias, float *y, int64_t rows, int cols, int threads) {
    float *zeros = bias ? NULL : calloc(cols, sizeof(float)); /* (a branch inside the loop would not vectorise) */
    if (!bias) bias = zeros;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
#pragma omp simd
        for (int c = 0; c < cols; c++) {
            const float z = xr[c] + bias[c];
            yr[c] = z * gelu_sigma(z);
        }
    }
    free(zeros);
}

/* d/dz [z·σ(2u)] = σ + z·σ(1 − σ)·2u',  u' = √(2/π)·(1 + 3·0.044715·z²);  dx = dy·that,
 * db = Σ_rows dx, summed over a fixed split of the rows (CHUNKS parts, then the parts in order) so
 * the result does not depend on the number of threads. */
#define CHUNKS 16
void gelu_backward(const float *x, const float *bias, const float *dy, float *dx, float *dbias, int64_t rows,
                   int cols, int threads) {
    float *zeros = bias ? NULL : calloc(cols, sizeof(float));
    float *scratch = malloc(sizeof(float) * CHUNKS * cols); /* each part's partial db */
    if (!bias) bias = zeros;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int part = 0; part < CHUNKS; part++) {
        float *db = scratch + (size_t)part * cols;
        for (int c = 0; c < cols; c++) db[c] = 0.0f;
        for (int64_t r = rows * part / CHUNKS; r < rows * (part + 1) / CHUNKS; r++) {
            const float *xr = x + r * cols, *dyr = dy + r * cols;
            float *dxr = dx + r * cols;
#pragma omp simd
            for (int c = 0; c < cols; c++) {
                const float z = xr[c] + bias[c], s = gelu_sigma(z);
                const float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * z * z);
                dxr[c] = dyr[c] * (s + 2.0f * z * s * (1.0f - s) * du);
                db[c] += dxr[c];
            }
        }
    }
    if (dbias)
        for (int c = 0; c < cols; c++) {
            float sum = 0.0f;
            for (int part = 0; part < CHUNKS; part++) sum += scratch[(size_t)part * cols + c];
            dbias[c] = sum;
        }
    free(scratch);
    free(zeros);
}

/* ---- layer norm ------------------------------------------------------------------------------
 * y = (x − mean)·rstd·γ + β over each row of C values, rstd = 1/√(var + eps); mean and rstd are kept
 * for the backward pass:
 *   x̂ = (x − mean)·rstd,  g = dy·γ,  dx = rstd·(g − mean(g) − x̂·mean(g·x̂)),
 *   dγ = Σ_rows dy·x̂,  dβ = Σ_rows dy.
 * dγ and dβ are summed over a fixed split of the rows (CHUNKS parts, then the parts in order), so
 * the result does not depend on the number of threads. beta and dbeta may be NULL (no bias). */

void layer_norm_forward(const float *x, const float *gamma, const float *beta, float *y, float *mean, float *rstd,
                        int64_t N, int C, float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * C;
        float *yn = y + n * C;
        float sum = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < C; c++) sum += xn[c];
        const float mu = sum / C;
#pragma omp simd reduction(+ : sq)
        for (int c = 0; c < C; c++) sq += (xn[c] - mu) * (xn[c] - mu);
        const float r = 1.0f / sqrtf(sq / C + eps);
        mean[n] = mu, rstd[n] = r;
        if (beta) {
#pragma omp simd
            for (int c = 0; c < C; c++) yn[c] = (xn[c] - mu) * r * gamma[c] + beta[c];
        } else {
#pragma omp simd
            for (int c = 0; c < C; c++) yn[c] = (xn[c] - mu) * r * gamma[c];
        }
    }
}

void layer_norm_backward(const float *x, const float *gamma, const float *mean, const float *rstd, const float *dy,
                         float *dx, float *dgamma, float *dbeta, int64_t N, int C, int threads) {
    float *scratch = malloc(sizeof(float) * 2 * CHUNKS * C); /* each part's partial dγ and dβ */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int part = 0; part < CHUNKS; part++) {
        float *pg = scratch + (size_t)part * 2 * C, *pb = pg + C;
        for (int c = 0; c < C; c++) pg[c] = 0.0f, pb[c] = 0.0f;
        for (int64_t n = N * part / CHUNKS; n < N * (part + 1) / CHUNKS; n++) {
            const float *xn = x + n * C, *dyn = dy + n * C, mu = mean[n], r = rstd[n];
            float *dxn = dx + n * C;
            float mg = 0.0f, mgx = 0.0f; /* Σ g and Σ g·x̂ over the row */
#pragma omp simd reduction(+ : mg, mgx)
            for (int c = 0; c < C; c++) {
                const float xh = (xn[c] - mu) * r, g = dyn[c] * gamma[c];
                mg += g, mgx += g * xh;
                pg[c] += dyn[c] * xh, pb[c] += dyn[c];
            }
            mg /= C, mgx /= C;
#pragma omp simd
            for (int c = 0; c < C; c++) dxn[c] = r * (dyn[c] * gamma[c] - mg - (xn[c] - mu) * r * mgx);
        }
    }
    for (int c = 0; c < C; c++) {
        float g = 0.0f, b = 0.0f;
        for (int part = 0; part < CHUNKS; part++) g += scratch[(size_t)part * 2 * C + c], b += scratch[(size_t)part * 2 * C + C + c];
        dgamma[c] = g;
        if (dbeta) dbeta[c] = b;
    }
    free(scratch);
}

/* ---- causal attention ------------------------------------------------------------------------
 * Layout: q, k, v point at (batch 0, position 0, head 0); position t of batch b, head h starts at
 * b·batch_stride + t·row_stride + h·d (so a fused (B, T, 3C) projection is read in place).
 * out and dout are (B, T, H·d) contiguous, lse is (B, H, T). d must be a multiple of 16.
 *
 * One (batch, head) pair at a time: its Q, K, V (T × d) are copied into zero-padded blocks
 * (Tp = T rounded up to 16 rows) and every product is a small matrix product made of 4 × 16 tiles
 * that skip what the causal mask removes. */
#define TR 4  /* tile rows */
#define BIAS(part) (bias ? bias + (part) * C + (int64_t)h * d : NULL)         /* this head's bias of Q, K or V */
#define SUMS(part) (dbias ? scratch + (int64_t)b * 3 * C + (part) * C + (int64_t)h * d : NULL) /* and its sums */
#define TC 16 /* tile columns: one 512-bit vector of floats */

/* Sixteen floats as one value: GCC/Clang vector extension, one AVX-512 register where the CPU has
 * it (two AVX2 registers otherwise). */
typedef float f16 __attribute__((vector_size(TC * sizeof(float))));

/* dst[c·ldd + r] = src[r·lds + c] for a 16 × 16 block. With GCC, in registers: four rounds that swap
 * the off-diagonal halves of ever smaller blocks (8, 4, 2, 1), each a two-vector shuffle per row pair. */
static inline void transpose16(const float *src, int64_t lds, float *dst, int64_t ldd) {
#if defined(__GNUC__) && !defined(__clang__)
    typedef int32_t i16 __attribute__((vector_size(TC * sizeof(int32_t))));
    f16 r[TC];
    for (int i = 0; i < TC; i++) memcpy(&r[i], src + i * lds, sizeof r[i]);
#define ROUND(b)                                                                                                  \
    {                                                                                                             \
        const i16 lo = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};                                  \
        const i16 keep = lo + (((lo & (b)) != 0) & (16 - (b))), take = keep + (b); /* lanes with bit b set: from c */ \
        for (int i = 0; i < TC; i++)                                                                              \
            if (!(i & (b))) {                                                                                     \
                const f16 a = r[i], c = r[i + (b)];                                                               \
                r[i] = __builtin_shuffle(a, c, keep);                                                             \
                r[i + (b)] = __builtin_shuffle(a, c, take);                                                       \
            }                                                                                                     \
    }
    ROUND(8) ROUND(4) ROUND(2) ROUND(1)
#undef ROUND
    for (int i = 0; i < TC; i++) memcpy(dst + i * ldd, &r[i], sizeof r[i]);
#else
    for (int i = 0; i < TC; i++)
        for (int c = 0; c < TC; c++) dst[c * ldd + i] = src[i * lds + c];
#endif
}

/* C[r][c] = Σ_{k<K} A[r][k]·B[k][c] for one TR × TC tile; the accumulators stay in registers.
 * a_transposed: A is stored as Aᵀ, i.e. A[r][k] is at A[k·lda + r] (saves transposing it). */
static inline void tile(int K, const float *restrict A, int lda, int a_transposed, const float *restrict B, int ldb,
                        float *restrict C, int ldc) {
    f16 acc[TR] = {0};
    const size_t row_step = a_transposed ? 1 : (size_t)lda, k_step = a_transposed ? (size_t)lda : 1;
    for (int k = 0; k < K; k++) {
        f16 b;
        memcpy(&b, B + (size_t)k * ldb, sizeof b);
        for (int r = 0; r < TR; r++) acc[r] += A[r * row_step + k * k_step] * b;
    }
    for (int r = 0; r < TR; r++) memcpy(C + (size_t)r * ldc, &acc[r], sizeof acc[r]);
}

enum causal_part {
    COLUMNS_UP_TO_ROW, /* scores: row i needs columns (keys) 0..i only */
    SUM_UP_TO_ROW,     /* P·V, dS·K: row i sums over keys 0..i (P is zero beyond) */
    SUM_FROM_ROW,      /* Pᵀ·dO, dSᵀ·Q: row j (a key) sums over queries j..T-1; A is given untransposed */
};

/* C (M × N) = A (M × Kdim) · B (Kdim × N), only the part the causal mask keeps. M % TR == 0, N % TC == 0.
 * For SUM_FROM_ROW, A is passed as the (Kdim × M) matrix whose transpose it is. */
static void causal_product(enum causal_part part, int M, int N, int Kdim, const float *A, int lda,
                           const float *B, int ldb, float *C, int ldc) {
    for (int r0 = 0; r0 < M; r0 += TR) {
        int n = N, k0 = 0, k1 = Kdim;
        if (part == COLUMNS_UP_TO_ROW) n = (r0 + TR + TC - 1) / TC * TC < N ? (r0 + TR + TC - 1) / TC * TC : N;
        if (part == SUM_UP_TO_ROW) k1 = r0 + TR < Kdim ? r0 + TR : Kdim;
        if (part == SUM_FROM_ROW) k0 = r0 < Kdim ? r0 : Kdim;
        const int t = part == SUM_FROM_ROW;
        const float *a = t ? A + (size_t)k0 * lda + r0 : A + (size_t)r0 * lda + k0;
        for (int c0 = 0; c0 < n; c0 += TC)
            tile(k1 - k0, a, lda, t, B + (size_t)k0 * ldb + c0, ldb, C + (size_t)r0 * ldc + c0, ldc);
    }
}

/* dst (Tp × d) ← the T rows of one head (row_stride apart) plus the bias (d values, or NULL), zero padded */
static void load_rows(const float *src, const float *bias, int64_t row_stride, int T, int Tp, int d, float *dst) {
    for (int t = 0; t < T; t++)
        if (bias)
            for (int c = 0; c < d; c++) dst[(size_t)t * d + c] = src[t * row_stride + c] + bias[c];
        else
            for (int c = 0; c < d; c++) dst[(size_t)t * d + c] = src[t * row_stride + c];
    for (size_t i = (size_t)T * d; i < (size_t)Tp * d; i++) dst[i] = 0.0f;
}

/* the first T rows of src (Tp × d) → dst, rows row_stride apart; sums (d values, or NULL) ← their column sums */
static void store_rows(const float *src, int T, int d, float *dst, int64_t row_stride, float *sums) {
    for (int t = 0; t < T; t++)
        for (int c = 0; c < d; c++) dst[t * row_stride + c] = src[(size_t)t * d + c];
    if (sums) {
        for (int c = 0; c < d; c++) sums[c] = 0.0f;
        for (int t = 0; t < T; t++)
            for (int c = 0; c < d; c++) sums[c] += src[(size_t)t * d + c];
    }
}

/* dst (d × Tp) ← the T rows of one head, transposed, zero padded (written row by row of dst:
 * strided reads are cheaper than strided writes) */
static void load_rows_transposed(const float *src, const float *bias, int64_t row_stride, int T, int Tp, int d,
                                 float *dst) {
    for (int c = 0; c < d; c++) {
        float *out = dst + (size_t)c * Tp;
        const float b = bias ? bias[c] : 0.0f;
        for (int t = 0; t < T; t++) out[t] = src[t * row_stride + c] + b;
        for (int t = T; t < Tp; t++) out[t] = 0.0f;
    }
}

/* RoPE on the first T rows of x (Tp × d), in place: each pair (x_c, x_{c+d/2}) of row t turned by the
 * angle whose cos and sin are cos[t][c], sin[t][c] (T × d/2) — or, inverse, turned back (Rᵀ: how a
 * gradient goes back through the rotation). As positional.apply_rope. */
static void rotate_rows(float *x, const float *cos, const float *sin, int T, int d, int inverse) {
    const int half = d / 2;
    const float sign = inverse ? -1.0f : 1.0f;
    for (int t = 0; t < T; t++) {
        float *row = x + (size_t)t * d;
        const float *ct = cos + (size_t)t * half, *st = sin + (size_t)t * half;
#pragma omp simd
        for (int c = 0; c < half; c++) {
            const float x1 = row[c], x2 = row[c + half], sn = sign * st[c];
            row[c] = x1 * ct[c] - x2 * sn;
            row[c + half] = x1 * sn + x2 * ct[c];
        }
    }
}

/* dst (d × Tp) ← srcᵀ for src (Tp × d), both multiples of 16, in 16 × 16 blocks */
static void transpose_rows(const float *src, int Tp, int d, float *dst) {
    for (int t0 = 0; t0 < Tp; t0 += TC)
        for (int c0 = 0; c0 < d; c0 += TC) transpose16(src + (size_t)t0 * d + c0, d, dst + (size_t)c0 * Tp + t0, Tp);
}

/* One head's queries and keys, read as the forward and the backward pass both need them:
 * Q, K (Tp × d) ← rows of q, k plus their bias, turned by RoPE where given; Kt ← Kᵀ;
 * S (Tp × Tp) ← Q Kᵀ (unscaled) on the part the causal mask keeps, zeros elsewhere. */
static void scores(const float *q, const float *k, const float *q_bias, const float *k_bias, const float *rope_cos,
                   const float *rope_sin, int64_t row_stride, int T, int Tp, int d, float *Q, float *K, float *Kt,
                   float *S) {
    load_rows(q, q_bias, row_stride, T, Tp, d, Q);
    load_rows(k, k_bias, row_stride, T, Tp, d, K);
    if (rope_cos) {
        rotate_rows(Q, rope_cos, rope_sin, T, d, 0);
        rotate_rows(K, rope_cos, rope_sin, T, d, 0);
    }
    transpose_rows(K, Tp, d, Kt);
    memset(S, 0, sizeof(float) * (size_t)Tp * Tp);
    causal_product(COLUMNS_UP_TO_ROW, Tp, Tp, d, Q, d, Kt, Tp, S, Tp);
}

/* Σ or max over the 16 lanes of each of 16 rows (parts: 16 × 16) → one value per row: transposed,
 * the 16 horizontal reductions become 15 vertical vector operations. */
static inline void reduce_rows(const float *parts, int use_max, float *out) {
    float t[TC * TC];
    transpose16(parts, TC, t, TC);
    for (int r = 0; r < TC; r++) out[r] = t[r];
    for (int l = 1; l < TC; l++)
#pragma omp simd
        for (int r = 0; r < TC; r++) {
            const float x = t[l * TC + r];
            out[r] = use_max ? (x > out[r] ? x : out[r]) : out[r] + x;
        }
}

/* Rows i0 … i0+rows−1 (rows ≤ 16) of S (scores, unscaled, rows Tp apart) → P = softmax(scale·S) over
 * keys 0..i, zero beyond (to the end of the row's last 16-key block); lse ← each row's log-sum-exp.
 * Each row is read in whole 16-key blocks with 16 running maxima / sums, one vector operation per
 * block; the band's 16 rows are then reduced together (reduce_rows). */
static void softmax_band(float *S, int Tp, int i0, int rows, float scale, float *lse) {
    float parts[TC * TC], m[TC], sum[TC];
    for (int r = 0; r < TC; r++) {
        float *mx = parts + r * TC;
        for (int l = 0; l < TC; l++) mx[l] = r < rows ? -3.0e38f : 0.0f;
        const int i = i0 + r;
        for (int jb = 0; r < rows && jb <= i / TC; jb++)
#pragma omp simd
            for (int l = 0; l < TC; l++) {
                const int j = jb * TC + l;
                const float x = S[(size_t)i * Tp + j], masked = j <= i ? x : -3.0e38f;
                mx[l] = masked > mx[l] ? masked : mx[l];
            }
    }
    reduce_rows(parts, 1, m);
    for (int r = 0; r < TC; r++) {
        float *sm = parts + r * TC, *s = S + (size_t)(i0 + r) * Tp;
        const int i = i0 + r;
        const float mr = m[r] * scale;
        for (int l = 0; l < TC; l++) sm[l] = r < rows ? 0.0f : 1.0f;
        for (int jb = 0; r < rows && jb <= i / TC; jb++)
#pragma omp simd
            for (int l = 0; l < TC; l++) {
                const int j = jb * TC + l;
                const float e = exp_fast(s[j] * scale - mr);
                s[j] = j <= i ? e : 0.0f;
                sm[l] += s[j];
            }
    }
    reduce_rows(parts, 0, sum);
    for (int r = 0; r < rows; r++) {
        float *s = S + (size_t)(i0 + r) * Tp;
        const float inv = 1.0f / sum[r];
        for (int j = 0; j < ((i0 + r) / TC + 1) * TC; j++) s[j] *= inv;
        lse[r] = m[r] * scale + logf(sum[r]);
    }
}

void attention_forward(const float *q, const float *k, const float *v, int64_t row_stride, int64_t batch_stride,
                       const float *bias, const float *rope_cos, const float *rope_sin, float *out, float *lse, int B,
                       int T, int H, int d, float scale, int threads) {
    const int64_t C = (int64_t)H * d;
    const int Tp = (T + TC - 1) / TC * TC;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        const int64_t base = b * batch_stride + (int64_t)h * d;
        const size_t td = (size_t)Tp * d, tt = (size_t)Tp * Tp;
        float *buf = malloc(sizeof(float) * (5 * td + tt));
        float *Q = buf, *K = Q + td, *Kt = K + td, *V = Kt + td, *O = V + td, *P = O + td;
        scores(q + base, k + base, BIAS(0), BIAS(1), rope_cos, rope_sin, row_stride, T, Tp, d, Q, K, Kt, P);
        load_rows(v + base, BIAS(2), row_stride, T, Tp, d, V);
        for (int i0 = 0; i0 < T; i0 += TC) softmax_band(P, Tp, i0, T - i0 < TC ? T - i0 : TC, scale, lse + (int64_t)bh * T + i0);
        causal_product(SUM_UP_TO_ROW, Tp, d, T, P, Tp, V, d, O, d); /* O = P V */
        store_rows(O, T, d, out + (int64_t)b * T * C + (int64_t)h * d, C, NULL);
        free(buf);
    }
}

/* With P = softmax(scale·Q Kᵀ) (causal), O = P V and dO given:
 *   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = scale·P ⊙ (dP − rowsum(dO ⊙ O)),  dQ = dS K,  dK = dSᵀ Q.
 * P is recomputed from Q, K and the saved log-sum-exp. dq, dk, dv use q, k, v's layout. With a bias,
 * dbias (3·H·d) = the sums of dQ, dK, dV over batch and positions. */
void attention_backward(const float *q, const float *k, const float *v, int64_t row_stride, int64_t batch_stride,
                        const float *bias, const float *rope_cos, const float *rope_sin, const float *out,
                        const float *dout, const float *lse, float *dq, float *dk, float *dv, float *dbias, int B,
                        int T, int H, int d, float scale, int threads) {
    const int64_t C = (int64_t)H * d;
    float *scratch = dbias ? malloc(sizeof(float) * B * 3 * C) : NULL; /* each batch element's bias sums */
    const int Tp = (T + TC - 1) / TC * TC;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H;
        const int64_t base = b * batch_stride + (int64_t)h * d, obase = (int64_t)b * T * C + (int64_t)h * d;
        const size_t td = (size_t)Tp * d, tt = (size_t)Tp * Tp;
        float *buf = malloc(sizeof(float) * (6 * td + 2 * tt));
        float *Q = buf, *K = Q + td, *Kt = K + td, *Vt = Kt + td, *dO = Vt + td, *G = dO + td; /* G: a gradient */
        float *P = G + td, *dS = P + tt;
        scores(q + base, k + base, BIAS(0), BIAS(1), rope_cos, rope_sin, row_stride, T, Tp, d, Q, K, Kt, P);
        load_rows_transposed(v + base, BIAS(2), row_stride, T, Tp, d, Vt);
        load_rows(dout + obase, NULL, C, T, Tp, d, dO);
        memset(dS, 0, sizeof(float) * tt);
        causal_product(COLUMNS_UP_TO_ROW, Tp, Tp, d, dO, d, Vt, Tp, dS, Tp); /* dP = dO Vᵀ */
        float parts[TC * TC], deltas[TC]; /* rowsum(dO ⊙ O), 16 rows at a time (reduce_rows) */
        for (int i = 0; i < T; i++) {
            float *p = P + (size_t)i * Tp, *ds = dS + (size_t)i * Tp;
            if (i % TC == 0) {
                for (int r = 0; r < TC; r++) {
                    float *part = parts + r * TC;
                    for (int lane = 0; lane < TC; lane++) part[lane] = 0.0f;
                    if (i + r >= T) continue;
                    const float *oi = out + obase + (int64_t)(i + r) * C, *doi = dO + (size_t)(i + r) * d;
                    for (int c0 = 0; c0 < d; c0 += TC)
#pragma omp simd
                        for (int lane = 0; lane < TC; lane++) part[lane] += doi[c0 + lane] * oi[c0 + lane];
                }
                reduce_rows(parts, 0, deltas);
            }
            const float l = lse[(int64_t)bh * T + i], delta = deltas[i % TC];
            for (int jb = 0; jb <= i / TC; jb++)
                for (int lane = 0; lane < TC; lane++) {
                    const int j = jb * TC + lane;
                    const float e = exp_fast(p[j] * scale - l);
                    p[j] = j <= i ? e : 0.0f;
                    ds[j] = scale * p[j] * (ds[j] - delta);
                }
        }
        causal_product(SUM_UP_TO_ROW, Tp, d, T, dS, Tp, K, d, G, d); /* dQ = dS K */
        if (rope_cos) rotate_rows(G, rope_cos, rope_sin, T, d, 1); /* back through the rotation */
        store_rows(G, T, d, dq + base, row_stride, SUMS(0));
        causal_product(SUM_FROM_ROW, Tp, d, T, dS, Tp, Q, d, G, d); /* dK = dSᵀ Q */
        if (rope_cos) rotate_rows(G, rope_cos, rope_sin, T, d, 1);
        store_rows(G, T, d, dk + base, row_stride, SUMS(1));
        causal_product(SUM_FROM_ROW, Tp, d, T, P, Tp, dO, d, G, d); /* dV = Pᵀ dO */
        store_rows(G, T, d, dv + base, row_stride, SUMS(2));
        free(buf);
    }
    if (dbias) /* each batch element's sums, added in order */
        for (int64_t c = 0; c < 3 * C; c++) {
            float sum = 0.0f;
            for (int b = 0; b < B; b++) sum += scratch[b * 3 * C + c];
            dbias[c] = sum;
        }
    free(scratch);
}

/* ---- matrix products for the linear layers: C = A·B (+ bias) -----------------------------------
 * The product every linear layer makes, forward (y = x·Wᵀ + b) and backward (dx = dy·W,
 * dW = dyᵀ·x). Each MR × NR block of C is one register tile (16 accumulators of 16 floats: the FMA
 * units stay busy while the next B row loads), summed over k in order, so every element of C comes
 * from the same loop for any thread count. B is read in place when its rows are contiguous and its
 * width a multiple of NR; otherwise it is first copied into zero-padded panels of NR columns. */
#define MR 8
#define NR 32

static inline void matmul_tile(int K, const float *restrict A, int64_t a_row, int64_t a_col, int rows,
                               const float *restrict B, int64_t ldb, float *restrict C, int64_t ldc, int cols,
                               const float *restrict bias) {
    f16 c0[MR] = {0}, c1[MR] = {0};
    int64_t offset[MR]; /* rows past the end repeat the last one: read, never stored */
    for (int r = 0; r < MR; r++) offset[r] = (r < rows ? r : rows - 1) * a_row;
    for (int k = 0; k < K; k++) {
        f16 b0, b1;
        memcpy(&b0, B + k * ldb, sizeof b0);
        memcpy(&b1, B + k * ldb + TC, sizeof b1);
        for (int r = 0; r < MR; r++) {
            const float a = A[offset[r] + k * a_col];
            c0[r] += a * b0;
            c1[r] += a * b1;
        }
    }
    f16 bias0 = {0}, bias1 = {0};
    if (bias) {
        float padded[NR] = {0};
        memcpy(padded, bias, sizeof(float) * cols);
        memcpy(&bias0, padded, sizeof bias0);
        memcpy(&bias1, padded + TC, sizeof bias1);
    }
    for (int r = 0; r < rows; r++) {
        c0[r] += bias0;
        c1[r] += bias1;
        if (cols == NR) {
            memcpy(C + r * ldc, &c0[r], sizeof c0[r]);
            memcpy(C + r * ldc + TC, &c1[r], sizeof c1[r]);
        } else {
            float out[NR];
            memcpy(out, &c0[r], sizeof c0[r]);
            memcpy(out + TC, &c1[r], sizeof c1[r]);
            memcpy(C + r * ldc, out, sizeof(float) * cols);
        }
    }
}

/* One product C (M × N, rows ldc apart) = A (M × K) · B (K × N) + bias (N values, or NULL). A[i][k] is
 * at A[i·a_row + k·a_col] and B[k][n] at B[k·b_row + n·b_col]: a transposed operand is just other
 * strides (x·Wᵀ passes W with its strides swapped). */
typedef struct {
    int64_t M, N, K;
    const float *A;
    int64_t a_row, a_col;
    const float *B;
    int64_t b_row, b_col;
    const float *bias;
    float *C;
    int64_t ldc;
    float *panels; /* B as zero-padded panels of NR columns, where it cannot be read in place */
} product_t;

static void product_prepare(product_t *p) {
    const int64_t tiles_n = (p->N + NR - 1) / NR;
    p->panels = p->b_col != 1 || p->N % NR ? malloc(sizeof(float) * p->K * NR * tiles_n) : NULL;
}

/* Inside a parallel region: this thread's share of the panels (panel t holds B's columns t·NR …
 * t·NR + NR − 1 as K rows of NR floats), copied in blocks of 16 k so both sides stay in L1. */
static void product_pack(const product_t *p) {
    if (!p->panels) return;
    const int64_t tiles_n = (p->N + NR - 1) / NR, K = p->K;
#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < tiles_n; t++) {
        float *P = p->panels + t * K * NR;
        const int width = p->N - t * NR < NR ? (int)(p->N - t * NR) : NR;
        for (int64_t k0 = 0; k0 < K; k0 += 16) {
            if (p->b_row == 1 && width == NR && k0 + 16 <= K) { /* B = Wᵀ of a row-major W: 16 × 16 blocks */
                for (int j0 = 0; j0 < NR; j0 += TC)
                    transpose16(p->B + k0 + (t * NR + j0) * p->b_col, p->b_col, P + k0 * NR + j0, NR);
                continue;
            }
            for (int j = 0; j < NR; j++)
                for (int64_t k = k0; k < k0 + 16 && k < K; k++)
                    P[k * NR + j] = j < width ? p->B[k * p->b_row + (t * NR + j) * p->b_col] : 0.0f;
        }
    }
}

/* Inside a parallel region, after the packing: this thread's share of the tiles. */
static void product_tiles(const product_t *p) {
    const int64_t tiles_m = (p->M + MR - 1) / MR, tiles_n = (p->N + NR - 1) / NR;
#pragma omp for schedule(static) collapse(2) nowait
    for (int64_t i = 0; i < tiles_m; i++)
        for (int64_t t = 0; t < tiles_n; t++) {
            const int64_t r0 = i * MR, c0 = t * NR;
            const float *b = p->panels ? p->panels + t * p->K * NR : p->B + c0;
            matmul_tile((int)p->K, p->A + r0 * p->a_row, p->a_row, p->a_col, p->M - r0 < MR ? (int)(p->M - r0) : MR, b,
                        p->panels ? NR : p->b_row, p->C + r0 * p->ldc + c0, p->ldc,
                        p->N - c0 < NR ? (int)(p->N - c0) : NR, p->bias ? p->bias + c0 : NULL);
        }
}

/* Several products in one parallel region (one wake-up of the threads): pack, wait, multiply. */
static void products(product_t *p, int count, int threads) {
    for (int i = 0; i < count; i++) product_prepare(&p[i]);
#pragma omp parallel num_threads(threads)
    {
        for (int i = 0; i < count; i++) product_pack(&p[i]);
#pragma omp barrier
        for (int i = 0; i < count; i++) product_tiles(&p[i]);
    }
    for (int i = 0; i < count; i++) free(p[i].panels);
}

void matmul(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_row, int64_t a_col, const float *B,
            int64_t b_row, int64_t b_col, const float *bias, float *C, int64_t ldc, int threads) {
    product_t p = {M, N, K, A, a_row, a_col, B, b_row, b_col, bias, C, ldc, NULL};
    products(&p, 1, threads);
}

/* The backward pass of y = x·Wᵀ + b, x (M × n_in, rows x_row apart), W (n_out × n_in, strides w_row,
 * w_col), dy (M × n_out, rows contiguous), in one call; any of dx, dW, db may be NULL (not wanted):
 *   dx = dy·W,  dW = dyᵀ·x,  db = 1ᵀ·dy (the column sums of dy, as a product with a row of ones) */
void linear_backward(int64_t M, int64_t n_in, int64_t n_out, const float *x, int64_t x_row, int64_t x_col,
                     const float *W, int64_t w_row, int64_t w_col, const float *dy, float *dx, float *dW, float *db,
                     int threads) {
    static const float one = 1.0f;
    product_t p[3];
    int count = 0;
    if (dx) p[count++] = (product_t){M, n_in, n_out, dy, n_out, 1, W, w_row, w_col, NULL, dx, n_in, NULL};
    if (dW) p[count++] = (product_t){n_out, n_in, M, dy, 1, n_out, x, x_row, x_col, NULL, dW, n_in, NULL};
    if (db) p[count++] = (product_t){1, n_out, M, &one, 0, 0, dy, n_out, 1, NULL, db, n_out, NULL};
    products(p, count, threads);
}

/* ---- over many tensors at once: gradient norm, scaling, AdamW ---------------------------------
 * Each takes `count` float32 tensors as arrays of pointers and lengths and splits the work into
 * fixed chunks of CHUNK elements, so sums come out the same for any number of threads. */
#define CHUNK 16384

typedef struct { int tensor; int64_t start, end; } chunk_t;

static chunk_t *split(const int64_t *n, int count, int *chunks) {
    int total = 0;
    for (int t = 0; t < count; t++) total += (int)((n[t] + CHUNK - 1) / CHUNK);
    chunk_t *c = malloc(sizeof(chunk_t) * (total ? total : 1));
    int i = 0;
    for (int t = 0; t < count; t++)
        for (int64_t s = 0; s < n[t]; s += CHUNK) c[i++] = (chunk_t){t, s, s + CHUNK < n[t] ? s + CHUNK : n[t]};
    *chunks = total;
    return c;
}

/* Σ x² over every element of every tensor, accumulated in float64 */
double sum_of_squares(float *const *x, const int64_t *n, int count, int threads) {
    int chunks;
    chunk_t *c = split(n, count, &chunks);
    double *partial = malloc(sizeof(double) * (chunks ? chunks : 1)), total = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < chunks; i++) {
        const float *p = x[c[i].tensor];
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = c[i].start; j < c[i].end; j++) s += (double)p[j] * p[j];
        partial[i] = s;
    }
    for (int i = 0; i < chunks; i++) total += partial[i];
    free(partial);
    free(c);
    return total;
}

void scale(float *const *x, const int64_t *n, int count, float factor, int threads) {
    int chunks;
    chunk_t *c = split(n, count, &chunks);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < chunks; i++) {
        float *p = x[c[i].tensor];
#pragma omp simd
        for (int64_t j = c[i].start; j < c[i].end; j++) p[j] *= factor;
    }
    free(c);
}

/* AdamW (Loshchilov & Hutter), as torch.optim.AdamW computes it:
 *   θ ← θ·(1 − lr·λ);  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
 *   θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε) */
void adamw_step(float *const *param, float *const *grad, float *const *exp_avg, float *const *exp_avg_sq,
                const int64_t *n, int count, float lr, float beta1, float beta2, float eps, float weight_decay,
                float bias_correction1, float bias_correction2_sqrt, int threads) {
    int chunks;
    chunk_t *c = split(n, count, &chunks);
    const float decay = 1.0f - lr * weight_decay, step_size = lr / bias_correction1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < chunks; i++) {
        const int t = c[i].tensor;
        float *p = param[t], *m = exp_avg[t], *v = exp_avg_sq[t];
        const float *g = grad[t];
#pragma omp simd
        for (int64_t j = c[i].start; j < c[i].end; j++) {
            m[j] += (1.0f - beta1) * (g[j] - m[j]); /* = β₁m + (1 − β₁)g, as torch's lerp computes it */
            v[j] = beta2 * v[j] + (1.0f - beta2) * g[j] * g[j];
            p[j] = p[j] * decay - step_size * m[j] / (sqrtf(v[j]) / bias_correction2_sqrt + eps);
        }
    }
    free(c);
}

/* ---- low-bit weight-only matrix-vector products (groundup.quantize) --------------------------------
 * Decoding multiplies a few rows x (M × K) by each weight matrix, and reading the weights is the cost:
 * these read the stored integer codes directly and convert them in registers, one output channel at
 * a time (a row of W is K bytes or K/2 bytes, re-read from L1 for each of the M rows of x).
 *
 * int8:  y[m, n] = s[n] · Σ_k x[m, k] · q[n, k]  (+ b[n])
 * int4:  y[m, n] = Σ_g s[n, g] · (Σ_{k ∈ g} x[m, k] · q[n, k] − z[n, g] · Σ_{k ∈ g} x[m, k])  (+ b[n])
 *        q[n, 2j] = low nibble of byte j of row n, q[n, 2j+1] = its high nibble. The caller passes x
 *        split into its even and odd columns (xe, xo: M × K/2) and the group sums xs (M × K/g). */
void int8_linear(const float *x, const int8_t *q, const float *s, const float *b, float *y, int64_t M, int64_t N,
                 int64_t K, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *row = q + n * K;
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t k = 0; k < K; k++)
                acc += xm[k] * (float)row[k];
            y[m * N + n] = acc * s[n] + (b ? b[n] : 0.0f);
        }
    }
}

/* Σ_j e[j]·lo(bytes[j]) + o[j]·hi(bytes[j]) over one group of GH bytes (2·GH columns); the length
 * is a compile-time constant, so the loop is fully vectorised without a remainder. */
#define INT4_GROUP_DOT(GH)                                                                                \
    static inline float int4_dot_##GH(const uint8_t *bytes, const float *e, const float *o) {            \
        float acc = 0.0f;                                                                                 \
        _Pragma("omp simd reduction(+ : acc)") for (int j = 0; j < GH; j++) acc +=                        \
            e[j] * (float)(bytes[j] & 15) + o[j] * (float)(bytes[j] >> 4);                                \
        return acc;                                                                                       \
    }
INT4_GROUP_DOT(16)
INT4_GROUP_DOT(32)
INT4_GROUP_DOT(64)

static inline float int4_dot(const uint8_t *bytes, const float *e, const float *o, int64_t gh) {
    if (gh == 64) return int4_dot_64(bytes, e, o);
    if (gh == 32) return int4_dot_32(bytes, e, o);
    if (gh == 16) return int4_dot_16(bytes, e, o);
    float acc = 0.0f;
    for (int64_t j = 0; j < gh; j++) acc += e[j] * (float)(bytes[j] & 15) + o[j] * (float)(bytes[j] >> 4);
    return acc;
}

#if defined(__AVX512F__)
#include <immintrin.h>
/* One row of codes against one row of x, AVX-512: 16 bytes (32 codes) per step, the group's sum kept
 * in a vector and scaled into the row's vector total, one horizontal sum per row. */
static float int4_row(const uint8_t *row, const float *e, const float *o, const float *xs, const float *s,
                      const uint8_t *z, int64_t G, int64_t gh) {
    const __m128i low = _mm_set1_epi8(15);
    __m512 total = _mm512_setzero_ps();
    float offset = 0.0f;
    for (int64_t g = 0; g < G; g++) {
        __m512 acc_e = _mm512_setzero_ps(), acc_o = _mm512_setzero_ps();
        for (int64_t j = g * gh; j < (g + 1) * gh; j += 16) {
            __m128i b = _mm_loadu_si128((const __m128i *)(row + j));
            __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, low)));
            __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), low)));
            acc_e = _mm512_fmadd_ps(_mm512_loadu_ps(e + j), lo, acc_e);
            acc_o = _mm512_fmadd_ps(_mm512_loadu_ps(o + j), hi, acc_o);
        }
        total = _mm512_fmadd_ps(_mm512_set1_ps(s[g]), _mm512_add_ps(acc_e, acc_o), total);
        offset += s[g] * (float)z[g] * xs[g];
    }
    return _mm512_reduce_add_ps(total) - offset;
}
#else
static float int4_row(const uint8_t *row, const float *e, const float *o, const float *xs, const float *s,
                      const uint8_t *z, int64_t G, int64_t gh) {
    float total = 0.0f;
    for (int64_t g = 0; g < G; g++) {
        float acc = int4_dot(row + g * gh, e + g * gh, o + g * gh, gh);
        total += s[g] * (acc - (float)z[g] * xs[g]);
    }
    return total;
}
#endif

void int4_linear(const float *xe, const float *xo, const float *xs, const uint8_t *q, const float *s, const uint8_t *z,
                 const float *b, float *y, int64_t M, int64_t N, int64_t K, int64_t group, int threads) {
    const int64_t half = K / 2, gh = group / 2, G = K / group;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = int4_row(q + n * half, xe + m * half, xo + m * half, xs + m * G, s + n * G, z + n * G, G, gh) +
                           (b ? b[n] : 0.0f);
}
