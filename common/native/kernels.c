/* Fused CPU kernels for second-order meta-learning: the tail of a conv block, relu(max_pool(
 * group_norm(x))), as one function with its backward and the backward of that backward, each a
 * few passes over memory instead of the dozens of elementwise passes of PyTorch's
 * differentiable composite. The normalized map is never stored; gradients with respect to it
 * are nonzero only at each pooling window's maximum, so those terms are computed sparsely.
 *
 * Layout: contiguous (N, C, L) with L = prod(spatial); G groups of C/G channels. Reductions
 * accumulate in double. Single-threaded: fedmeta runs one task per core (see base.py).
 * Every function exists for float (suffix _f32) and double (_f64); built by native/build.py.
 * `omp simd` pragmas (compiled with -fopenmp-simd: no OpenMP runtime) vectorize the sums.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NO_ROUTE 255

/* Window iteration for 2^d max-pooling of one plane: `corner` is the offset of the window's
 * first element, tap[t] the offset of its t-th element (row-major), o the output index. */
#define WINDOW_SETUP                                                                             \
    if (d == 2) s2 = 1;                                                                          \
    const int64_t o0 = s0 / 2, o1 = s1 / 2, o2 = d == 3 ? s2 / 2 : 1, taps = d == 3 ? 8 : 4;     \
    const int64_t in = s0 * s1 * s2, out = o0 * o1 * o2;                                         \
    int64_t tap[8];                                                                              \
    for (int64_t t = 0; t < taps; t++)                                                           \
        tap[t] = d == 3 ? ((t >> 2) * s1 + ((t >> 1) & 1)) * s2 + (t & 1) : (t >> 1) * s1 + (t & 1); \
    (void)taps; (void)out; (void)tap;

#define FOR_WINDOWS(...)                                                                         \
    if (d == 2) { /* the same body with the window's shape known to the compiler */              \
        const int64_t taps_ = 4, tap_[4] = {0, 1, s1, s1 + 1};                                   \
        (void)taps_;                                                                             \
        for (int64_t a = 0; a < o0; a++)                                                         \
            for (int64_t i = 0; i < o1; i++, o++) {                                              \
                const int64_t corner = 2 * a * s1 + 2 * i;                                       \
                __VA_ARGS__                                                                      \
            }                                                                                    \
    } else {                                                                                     \
        const int64_t taps_ = 8, *tap_ = tap;                                                    \
        (void)taps_;                                                                             \
        for (int64_t a = 0; a < o0; a++)                                                         \
            for (int64_t i = 0; i < o1; i++)                                                     \
                for (int64_t j = 0; j < o2; j++, o++) {                                          \
                    const int64_t corner = (2 * a * s1 + 2 * i) * s2 + 2 * j;                    \
                    __VA_ARGS__                                                                  \
                }                                                                                \
    }

#define DEFINE_KERNELS(T, SUF)                                                                   \
                                                                                                 \
/* per (n, g): mean and 1/sqrt(var + eps), two passes (the group is small enough to stay in    \
 * cache for the second) */                                                                      \
static void gn_stats_##SUF(const T *x, T *mean, T *rstd, int64_t N, int64_t C, int64_t L,        \
                           int64_t G, double eps) {                                              \
    const int64_t cg = C / G, M = cg * L;                                                        \
    for (int64_t n = 0; n < N; n++)                                                              \
        for (int64_t g = 0; g < G; g++) {                                                        \
            const T *xs = x + (n * C + g * cg) * L;                                              \
            double s = 0;                                                                        \
            _Pragma("omp simd reduction(+:s)")                                                   \
            for (int64_t i = 0; i < M; i++) s += xs[i];                                          \
            const double mu = s / M;                                                             \
            double v = 0;                                                                        \
            _Pragma("omp simd reduction(+:v)")                                                   \
            for (int64_t i = 0; i < M; i++) { double dv = xs[i] - mu; v += dv * dv; }            \
            mean[n * G + g] = (T)mu;                                                             \
            rstd[n * G + g] = (T)(1.0 / sqrt(v / M + eps));                                      \
        }                                                                                        \
}                                                                                                \
                                                                                                 \
/* one row of 2x2 windows of relu(A + B v) from rows r0, r1: the first maximum, or the last NaN \
 * (NO_ROUTE where the maximum is <= 0). The main loop selects in float lanes without branches   \
 * (vectorized); a row holding a NaN is redone by the exact scalar rule. */                     \
static inline void pool_row2_##SUF(const T *restrict r0, const T *restrict r1, T *restrict y,     \
                                   uint8_t *restrict win, int64_t n, T A, T B) {                 \
    T kf[n];                                                                                     \
    int bad = 0;                                                                                 \
    for (int64_t i = 0; i < n; i++) {                                                            \
        const T v0 = A + B * r0[2 * i], v1 = A + B * r0[2 * i + 1];                              \
        const T v2 = A + B * r1[2 * i], v3 = A + B * r1[2 * i + 1];                              \
        const T a = v0 >= v1 ? v0 : v1, b = v2 >= v3 ? v2 : v3, m = a >= b ? a : b;             \
        const T k = v0 == m ? 0 : v1 == m ? 1 : v2 == m ? 2 : 3;                                 \
        bad |= (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3);                                \
        y[i] = m > 0 ? m : 0;                                                                    \
        kf[i] = m > 0 ? k : NO_ROUTE;                                                            \
    }                                                                                            \
    for (int64_t i = 0; i < n; i++) win[i] = (uint8_t)kf[i];                                     \
    if (!bad) return;                                                                            \
    for (int64_t i = 0; i < n; i++) {                                                            \
        const T v[4] = {r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1]};                     \
        T m = A + B * v[0];                                                                      \
        uint8_t best = 0;                                                                        \
        for (int t = 1; t < 4; t++) {                                                            \
            const T e = A + B * v[t];                                                            \
            if (e > m || isnan(e)) { m = e; best = (uint8_t)t; }                                 \
        }                                                                                        \
        if (!(m > 0) && !isnan(m)) { m = 0; best = NO_ROUTE; }                                   \
        y[i] = m;                                                                                \
        win[i] = best;                                                                           \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* Group norm, then 2^d max-pool, then ReLU, as one function of x (see native/ops.py): the      \
 * normalized map is never stored, and the backward touches the gradient only at each window's  \
 * maximum. Windows: plane p (= n * C + c) of s0 x s1 (x s2), outputs in row-major order. */    \
int gnpool_forward_##SUF(const T *x, const T *w, const T *b, T *y, uint8_t *win, T *mean,        \
                         T *rstd, int64_t N, int64_t C, int64_t G, double eps, int64_t d,        \
                         int64_t s0, int64_t s1, int64_t s2) {                                   \
    WINDOW_SETUP                                                                                 \
    gn_stats_##SUF(x, mean, rstd, N, C, in, G, eps);                                             \
    for (int64_t p = 0; p < N * C; p++) {                                                        \
        const int64_t c = p % C, ng = (p / C) * G + c / (C / G);                                 \
        const T B = (T)((double)rstd[ng] * (w ? w[c] : 1));                                      \
        const T A = (T)((b ? b[c] : 0) - (double)mean[ng] * rstd[ng] * (w ? w[c] : 1));          \
        const T *xp = x + p * in;                                                                \
        T *yp = y + p * out;                                                                     \
        uint8_t *wp = win + p * out;                                                             \
        if (d == 2) {                                                                            \
            for (int64_t a = 0; a < o0; a++)                                                     \
                pool_row2_##SUF(xp + 2 * a * s1, xp + (2 * a + 1) * s1, yp + a * o1, wp + a * o1, o1, A, B); \
            continue;                                                                            \
        }                                                                                        \
        int64_t o = 0;                                                                           \
        FOR_WINDOWS({                                                                            \
            T m = A + B * xp[corner];                                                            \
            uint8_t best = 0;                                                                    \
            for (int64_t t = 1; t < taps_; t++) {                                                 \
                const T v = A + B * xp[corner + tap_[t]];                                         \
                if (v > m || isnan(v)) { m = v; best = (uint8_t)t; }                             \
            }                                                                                    \
            if (!(m > 0) && !isnan(m)) { m = 0; best = NO_ROUTE; }                               \
            yp[o] = m;                                                                           \
            wp[o] = best;                                                                        \
        })                                                                                       \
    }                                                                                            \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* sparse per-channel sums over the routed maxima: s[0] += gy, s[1] += gy xh, s[2] += gy u */     \
static void gnpool_sparse_sums_##SUF(const T *x, const T *gy, const uint8_t *win, const T *u,    \
                                     const T *mean, const T *rstd, double *sums, int64_t N,      \
                                     int64_t C, int64_t G, int64_t d, int64_t s0, int64_t s1,    \
                                     int64_t s2) {                                               \
    WINDOW_SETUP                                                                                 \
    for (int64_t p = 0; p < N * C; p++) {                                                        \
        const int64_t c = p % C, ng = (p / C) * G + c / (C / G);                                 \
        const double mu = mean[ng], r = rstd[ng];                                                \
        const T *xp = x + p * in, *up = u ? u + p * in : NULL, *gp = gy + p * out;               \
        const uint8_t *wp = win + p * out;                                                       \
        double a0 = 0, a1 = 0, a2 = 0;                                                           \
        int64_t o = 0;                                                                           \
        FOR_WINDOWS({                                                                            \
            if (wp[o] != NO_ROUTE) {                                                             \
                const int64_t e = corner + tap_[wp[o]];                                           \
                const double g = gp[o];                                                          \
                a0 += g; a1 += g * (xp[e] - mu) * r;                                             \
                if (up) a2 += g * up[e];                                                         \
            }                                                                                    \
        })                                                                                       \
        double *sp = sums + p * 5;                                                               \
        sp[0] = a0; sp[1] = a1; sp[2] = a2;                                                      \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* dst[e] += k[p] * gy[o] at the routed maximum e of each window o of each plane p */            \
static void gnpool_scatter_add_##SUF(T *dst, const T *gy, const uint8_t *win, const double *k,   \
                                     int64_t N, int64_t C, int64_t d, int64_t s0, int64_t s1,    \
                                     int64_t s2) {                                               \
    WINDOW_SETUP                                                                                 \
    for (int64_t p = 0; p < N * C; p++) {                                                        \
        const T kc = (T)k[p];                                                                    \
        T *op = dst + p * in;                                                                    \
        const T *gp = gy + p * out;                                                              \
        const uint8_t *wp = win + p * out;                                                       \
        int64_t o = 0;                                                                           \
        FOR_WINDOWS({ if (wp[o] != NO_ROUTE) op[corner + tap_[wp[o]]] += kc * gp[o]; })           \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
int gnpool_backward_##SUF(const T *x, const T *gy, const uint8_t *win, const T *w, const T *mean, \
                          const T *rstd, T *gx, T *gw, T *gb, int64_t N, int64_t C, int64_t G,   \
                          int64_t d, int64_t s0, int64_t s1, int64_t s2) {                       \
    const int64_t L = s0 * s1 * (d == 3 ? s2 : 1), cg = C / G, M = cg * L;                       \
    double *sums = calloc(N * C * 5, sizeof(double)), *k1 = malloc(sizeof(double) * N * C);      \
    if (!sums || !k1) { free(sums); free(k1); return 1; }                                        \
    gnpool_sparse_sums_##SUF(x, gy, win, NULL, mean, rstd, sums, N, C, G, d, s0, s1, s2);        \
    for (int64_t c = 0; c < C; c++) {                                                            \
        double sw = 0, sb = 0;                                                                   \
        for (int64_t n = 0; n < N; n++) { sb += sums[(n * C + c) * 5]; sw += sums[(n * C + c) * 5 + 1]; } \
        gw[c] = (T)sw; gb[c] = (T)sb;                                                            \
    }                                                                                            \
    for (int64_t n = 0; n < N; n++)                                                              \
        for (int64_t g = 0; g < G; g++) {                                                        \
            double a = 0, bb = 0;                                                                \
            for (int64_t c = g * cg; c < (g + 1) * cg; c++) {                                    \
                const double wc = w ? w[c] : 1;                                                  \
                a += wc * sums[(n * C + c) * 5]; bb += wc * sums[(n * C + c) * 5 + 1];           \
            }                                                                                    \
            a /= M; bb /= M;                                                                     \
            const double mu = mean[n * G + g], r = rstd[n * G + g];                              \
            for (int64_t c = g * cg; c < (g + 1) * cg; c++) {                                    \
                /* gx = k1 gy + k2 x + k3: dense part here, k1 gy at the maxima below */         \
                const T k2 = (T)(-r * r * bb), k3 = (T)(r * (bb * r * mu - a));                  \
                k1[n * C + c] = r * (w ? w[c] : 1);                                              \
                const T *xc = x + (n * C + c) * L;                                               \
                T *oc = gx + (n * C + c) * L;                                                    \
                for (int64_t i = 0; i < L; i++) oc[i] = k2 * xc[i] + k3;                         \
            }                                                                                    \
        }                                                                                        \
    gnpool_scatter_add_##SUF(gx, gy, win, k1, N, C, d, s0, s1, s2);                              \
    free(sums); free(k1);                                                                        \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* The backward of gnpool_backward: gn_double_backward with gy scattered to the maxima, and     \
 * dL/dgy gathered back from them. */                                                            \
int gnpool_double_backward_##SUF(const T *x, const T *gy, const uint8_t *win, const T *w,        \
                                 const T *mean, const T *rstd, const T *u, const T *ugw,         \
                                 const T *ugb, T *ggy, T *gx2, T *gw2, int64_t N, int64_t C,     \
                                 int64_t G, int64_t d, int64_t s0, int64_t s1, int64_t s2) {     \
    WINDOW_SETUP                                                                                 \
    const int64_t L = in, cg = C / G, M = cg * L;                                                \
    double *sums = calloc(N * C * 5, sizeof(double)), *gwacc = calloc(C, sizeof(double));        \
    double *coef = malloc(sizeof(double) * N * C * 4); /* p0, p1, p2, q2 per plane */            \
    if (!sums || !gwacc || !coef) { free(sums); free(gwacc); free(coef); return 1; }             \
    gnpool_sparse_sums_##SUF(x, gy, win, u, mean, rstd, sums, N, C, G, d, s0, s1, s2);           \
    if (u) {                                                                                     \
        for (int64_t p = 0; p < N * C; p++) {                                                    \
            const int64_t ng = (p / C) * G + (p % C) / cg;                                       \
            const double mu = mean[ng], r = rstd[ng];                                            \
            const T *xc = x + p * L, *uc = u + p * L;                                            \
            double s3 = 0, s4 = 0;                                                               \
            _Pragma("omp simd reduction(+:s3,s4)")                                               \
            for (int64_t i = 0; i < L; i++) { const double uv = uc[i]; s3 += uv; s4 += uv * (xc[i] - mu) * r; } \
            sums[p * 5 + 3] = s3; sums[p * 5 + 4] = s4;                                          \
        }                                                                                        \
    }                                                                                            \
    for (int64_t n = 0; n < N; n++)                                                              \
        for (int64_t g = 0; g < G; g++) {                                                        \
            double a = 0, bb = 0, mu_ = 0, cu = 0, mud = 0, mgg = 0, mggx = 0;                   \
            for (int64_t c = g * cg; c < (g + 1) * cg; c++) {                                    \
                const double *s = sums + (n * C + c) * 5, wc = w ? w[c] : 1;                     \
                const double Gc = ugw ? ugw[c] : 0;                                              \
                a += wc * s[0]; bb += wc * s[1]; mud += wc * s[2]; mu_ += s[3]; cu += s[4];      \
                mgg += Gc * s[0]; mggx += Gc * s[1];                                             \
            }                                                                                    \
            a /= M; bb /= M; mud /= M; mu_ /= M; cu /= M; mgg /= M; mggx /= M;                   \
            const double mu = mean[n * G + g], r = rstd[n * G + g];                              \
            const double rbar = M * (mud - a * mu_ - bb * cu);                                   \
            const double mX = mgg - r * (bb * mu_ + cu * a), mXx = mggx - 2 * r * bb * cu;      \
            for (int64_t c = g * cg; c < (g + 1) * cg; c++) {                                    \
                const int64_t p = n * C + c;                                                     \
                const double *s = sums + p * 5;                                                  \
                gwacc[c] += r * (s[2] - mu_ * s[0] - cu * s[1]);                                 \
                const double wc = w ? w[c] : 1, Gc = ugw ? ugw[c] : 0, Bc = ugb ? ugb[c] : 0;    \
                double *k = coef + p * 4;                                                        \
                k[0] = Bc - wc * r * mu_; k[1] = Gc - wc * r * cu; k[2] = wc * r;                \
                k[3] = r * (Gc - r * cu * wc);                                                   \
                /* gx2 = q0 + q1 xh + q3 u densely; q2 gy at the maxima below */                 \
                const T q0 = (T)(-r * mX), q1 = (T)(-r * mXx - r * r * rbar / M), q3 = (T)(-r * r * bb); \
                const T tm = (T)mu, tr = (T)r;                                                   \
                const T *xc = x + p * L, *uc = u ? u + p * L : NULL;                             \
                T *oc = gx2 + p * L;                                                             \
                if (uc) { for (int64_t i = 0; i < L; i++) oc[i] = q0 + q1 * (xc[i] - tm) * tr + q3 * uc[i]; } \
                else { for (int64_t i = 0; i < L; i++) oc[i] = q0 + q1 * (xc[i] - tm) * tr; }    \
            }                                                                                    \
        }                                                                                        \
    for (int64_t p = 0; p < N * C; p++) {                                                        \
        const int64_t ng = (p / C) * G + (p % C) / cg;                                           \
        const double mu = mean[ng], r = rstd[ng], *k = coef + p * 4;                             \
        const T *xp = x + p * in, *up = u ? u + p * in : NULL, *gp = gy + p * out;               \
        const uint8_t *wp = win + p * out;                                                       \
        T *op = ggy + p * out, *xo = gx2 + p * in;                                               \
        int64_t o = 0;                                                                           \
        FOR_WINDOWS({                                                                            \
            if (wp[o] == NO_ROUTE) { op[o] = 0; }                                                \
            else {                                                                               \
                const int64_t e = corner + tap_[wp[o]];                                           \
                op[o] = (T)(k[0] + k[1] * (xp[e] - mu) * r + (up ? k[2] * up[e] : 0));           \
                xo[e] += (T)(k[3] * gp[o]);                                                      \
            }                                                                                    \
        })                                                                                       \
    }                                                                                            \
    for (int64_t c = 0; c < C; c++) gw2[c] = (T)gwacc[c];                                        \
    free(sums); free(gwacc); free(coef);                                                         \
    return 0;                                                                                    \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
