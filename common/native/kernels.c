/* Fused CPU kernels for second-order meta-learning: group norm (forward, backward, and the
 * backward of its backward) and 2^d max-pooling with indices, each a few passes over memory
 * instead of the dozens of elementwise passes of PyTorch's differentiable composite.
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

#define DEFINE_KERNELS(T, SUF)                                                                   \
                                                                                                 \
int gn_forward_##SUF(const T *x, const T *w, const T *b, T *y, T *mean, T *rstd, int64_t N,      \
                     int64_t C, int64_t L, int64_t G, double eps) {                              \
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
            for (int64_t i = 0; i < M; i++) { double d = xs[i] - mu; v += d * d; }               \
            const double r = 1.0 / sqrt(v / M + eps);                                            \
            mean[n * G + g] = (T)mu;                                                             \
            rstd[n * G + g] = (T)r;                                                              \
            for (int64_t c = 0; c < cg; c++) {                                                   \
                const int64_t ch = g * cg + c;                                                   \
                const T scale = (T)(r * (w ? w[ch] : 1)), shift = (T)((b ? b[ch] : 0) - mu * r * (w ? w[ch] : 1)); \
                const T *xc = xs + c * L;                                                        \
                T *yc = y + (n * C + ch) * L;                                                    \
                for (int64_t i = 0; i < L; i++) yc[i] = xc[i] * scale + shift;                   \
            }                                                                                    \
        }                                                                                        \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* per (n, c): sums[0] = sum gy, sums[1] = sum gy * xhat, and, when u is given,                  \
 * sums[2] = sum gy * u, sums[3] = sum u, sums[4] = sum u * xhat */                              \
static void gn_channel_sums_##SUF(const T *x, const T *gy, const T *u, const T *mean,            \
                                  const T *rstd, double *sums, int64_t N, int64_t C, int64_t L,  \
                                  int64_t G) {                                                   \
    const int64_t cg = C / G;                                                                    \
    for (int64_t n = 0; n < N; n++)                                                              \
        for (int64_t c = 0; c < C; c++) {                                                        \
            const int64_t off = (n * C + c) * L, ng = n * G + c / cg;                            \
            const double mu = mean[ng], r = rstd[ng];                                            \
            const T *xc = x + off, *gc = gy + off;                                               \
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;                                       \
            if (u) {                                                                             \
                const T *uc = u + off;                                                           \
                _Pragma("omp simd reduction(+:s0,s1,s2,s3,s4)")                                  \
                for (int64_t i = 0; i < L; i++) {                                                \
                    const double xh = (xc[i] - mu) * r, gv = gc[i], uv = uc[i];                  \
                    s0 += gv; s1 += gv * xh; s2 += gv * uv; s3 += uv; s4 += uv * xh;             \
                }                                                                                \
            } else {                                                                             \
                _Pragma("omp simd reduction(+:s0,s1)")                                           \
                for (int64_t i = 0; i < L; i++) {                                                \
                    const double xh = (xc[i] - mu) * r, gv = gc[i];                              \
                    s0 += gv; s1 += gv * xh;                                                     \
                }                                                                                \
            }                                                                                    \
            double *out = sums + (n * C + c) * 5;                                                \
            out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3; out[4] = s4;                     \
        }                                                                                        \
}                                                                                                \
                                                                                                 \
/* gx = rstd * (w gy - mean(w gy) - xhat mean(w gy xhat)); gw = sum gy xhat; gb = sum gy */     \
int gn_backward_##SUF(const T *x, const T *gy, const T *w, const T *mean, const T *rstd, T *gx,  \
                      T *gw, T *gb, int64_t N, int64_t C, int64_t L, int64_t G) {                \
    const int64_t cg = C / G, M = cg * L;                                                        \
    double *sums = malloc(sizeof(double) * N * C * 5);                                           \
    if (!sums) return 1;                                                                         \
    gn_channel_sums_##SUF(x, gy, NULL, mean, rstd, sums, N, C, L, G);                            \
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
                const int64_t off = (n * C + c) * L;                                             \
                /* gx = r*wc*gy - r*bb*r*x + r*(bb*r*mu - a) */                                  \
                const double wc = w ? w[c] : 1;                                                  \
                const T k1 = (T)(r * wc), k2 = (T)(-r * r * bb), k3 = (T)(r * (bb * r * mu - a)); \
                const T *xc = x + off, *gc = gy + off;                                           \
                T *oc = gx + off;                                                                \
                for (int64_t i = 0; i < L; i++) oc[i] = k1 * gc[i] + k2 * xc[i] + k3;            \
            }                                                                                    \
        }                                                                                        \
    free(sums);                                                                                  \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* The backward of gn_backward. Upstream: u = dL/dgx, ugw = dL/dgw, ugb = dL/dgb (NULL = 0).    \
 * Returns ggy = dL/dgy, gx2 = dL/dx, gw2 = dL/dw (closed form, see native/ops.py). */           \
int gn_double_backward_##SUF(const T *x, const T *gy, const T *w, const T *mean, const T *rstd,  \
                             const T *u, const T *ugw, const T *ugb, T *ggy, T *gx2, T *gw2,     \
                             int64_t N, int64_t C, int64_t L, int64_t G) {                       \
    const int64_t cg = C / G, M = cg * L;                                                        \
    double *sums = malloc(sizeof(double) * N * C * 5);                                           \
    double *gwacc = calloc(C, sizeof(double));                                                   \
    if (!sums || !gwacc) { free(sums); free(gwacc); return 1; }                                  \
    gn_channel_sums_##SUF(x, gy, u, mean, rstd, sums, N, C, L, G);                               \
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
                const double *s = sums + (n * C + c) * 5;                                        \
                gwacc[c] += r * (s[2] - mu_ * s[0] - cu * s[1]);                                 \
                const int64_t off = (n * C + c) * L;                                             \
                const double wc = w ? w[c] : 1, Gc = ugw ? ugw[c] : 0, Bc = ugb ? ugb[c] : 0;    \
                const T *xc = x + off, *gc = gy + off, *uc = u ? u + off : NULL;                 \
                T *o1 = ggy + off, *o2 = gx2 + off;                                              \
                /* ggy = Bc + Gc xh + wc r (u - mu_ - xh cu)                                     \
                 * Xh  = Gc gy - r (bb u + cu wc gy)                                             \
                 * gx2 = r (Xh - mX - xh mXx) - (r^2/M) rbar xh                                  \
                 * written as affine maps of (xh, gy, u) with per-channel coefficients */        \
                const T p0 = (T)(Bc - wc * r * mu_), p1 = (T)(Gc - wc * r * cu), p2 = (T)(wc * r);        \
                const T q0 = (T)(-r * mX), q1 = (T)(-r * mXx - r * r * rbar / M);                \
                const T q2 = (T)(r * (Gc - r * cu * wc)), q3 = (T)(-r * r * bb);                 \
                const T tm = (T)mu, tr = (T)r;                                                   \
                if (uc) {                                                                        \
                    for (int64_t i = 0; i < L; i++) {                                            \
                        const T xh = (xc[i] - tm) * tr;                                          \
                        o1[i] = p0 + p1 * xh + p2 * uc[i];                                       \
                        o2[i] = q0 + q1 * xh + q2 * gc[i] + q3 * uc[i];                          \
                    }                                                                            \
                } else {                                                                         \
                    for (int64_t i = 0; i < L; i++) {                                            \
                        const T xh = (xc[i] - tm) * tr;                                          \
                        o1[i] = p0 + p1 * xh;                                                    \
                        o2[i] = q0 + q1 * xh + q2 * gc[i];                                       \
                    }                                                                            \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    for (int64_t c = 0; c < C; c++) gw2[c] = (T)gwacc[c];                                        \
    free(sums); free(gwacc);                                                                     \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* 2x2 (d=2) or 2x2x2 (d=3) max-pool, stride 2, floor mode, on P planes of s0 x s1 (x s2).     \
 * win is the position of the maximum inside its window (row-major, 0..2^d-1): the first        \
 * maximum, or the last NaN, as PyTorch picks. With relu, y = max(y, 0) (NaN stays NaN) and a   \
 * window whose maximum is <= 0 routes no gradient (win = NO_ROUTE), as relu(max_pool(x)). */                                                \
int maxpool_forward_##SUF(const T *x, T *y, uint8_t *win, int64_t P, int64_t d, int64_t s0,      \
                          int64_t s1, int64_t s2, int64_t relu) {                                              \
    if (d == 2) s2 = 1;                                                                          \
    const int64_t o0 = s0 / 2, o1 = s1 / 2, o2 = d == 3 ? s2 / 2 : 1;                            \
    const int64_t in = s0 * s1 * s2, out = o0 * o1 * o2, taps = d == 3 ? 8 : 4;                  \
    if (d == 2) {                                                                                \
        for (int64_t p = 0; p < P; p++)                                                          \
            for (int64_t a = 0; a < o0; a++) {                                                   \
                const T *r0 = x + p * in + 2 * a * s1, *r1 = r0 + s1;                            \
                T *yo = y + p * out + a * o1;                                                    \
                uint8_t *wo = win + p * out + a * o1;                                            \
                for (int64_t i = 0; i < o1; i++) {                                               \
                    T m = r0[2 * i];                                                             \
                    uint8_t best = 0;                                                            \
                    if (r0[2 * i + 1] > m || isnan(r0[2 * i + 1])) { m = r0[2 * i + 1]; best = 1; } \
                    if (r1[2 * i] > m || isnan(r1[2 * i])) { m = r1[2 * i]; best = 2; }          \
                    if (r1[2 * i + 1] > m || isnan(r1[2 * i + 1])) { m = r1[2 * i + 1]; best = 3; } \
                    if (relu && !(m > 0) && !isnan(m)) { m = 0; best = NO_ROUTE; }               \
                    yo[i] = m;                                                                   \
                    wo[i] = best;                                                                \
                }                                                                                \
            }                                                                                    \
        return 0;                                                                                \
    }                                                                                            \
    for (int64_t p = 0; p < P; p++) {                                                            \
        const T *xp = x + p * in;                                                                \
        for (int64_t a = 0; a < o0; a++)                                                         \
            for (int64_t i = 0; i < o1; i++)                                                     \
                for (int64_t j = 0; j < o2; j++) {                                               \
                    const int64_t o = p * out + (a * o1 + i) * o2 + j;                           \
                    T m = 0;                                                                     \
                    uint8_t best = 0;                                                            \
                    for (int64_t t = 0; t < taps; t++) {                                         \
                        const T v = xp[((2 * a + (t >> 2)) * s1 + 2 * i + ((t >> 1) & 1)) * s2 + 2 * j + (t & 1)]; \
                        if (t == 0 || v > m || isnan(v)) { m = v; best = (uint8_t)t; }           \
                    }                                                                            \
                    if (relu && !(m > 0) && !isnan(m)) { m = 0; best = NO_ROUTE; }               \
                    y[o] = m;                                                                    \
                    win[o] = best;                                                               \
                }                                                                                \
    }                                                                                            \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* mode 0 (backward): gx = 0 except gx at each window's maximum = gy.                            \
 * mode 1 (its backward): gy = gx at each window's maximum. */                                   \
int maxpool_route_##SUF(T *gy, const uint8_t *win, T *gx, int64_t P, int64_t d, int64_t s0,      \
                        int64_t s1, int64_t s2, int64_t mode) {                                  \
    if (d == 2) s2 = 1;                                                                          \
    const int64_t o0 = s0 / 2, o1 = s1 / 2, o2 = d == 3 ? s2 / 2 : 1;                            \
    const int64_t in = s0 * s1 * s2, out = o0 * o1 * o2;                            \
    if (mode == 0) memset(gx, 0, sizeof(T) * P * in);                                            \
    if (d == 2) {                                                                                \
        for (int64_t p = 0; p < P; p++)                                                          \
            for (int64_t a = 0; a < o0; a++) {                                                   \
                T *row = gx + p * in + 2 * a * s1;                                               \
                T *go = gy + p * out + a * o1;                                                   \
                const uint8_t *wo = win + p * out + a * o1;                                      \
                for (int64_t i = 0; i < o1; i++) {                                               \
                    if (wo[i] == NO_ROUTE) { if (mode) go[i] = 0; continue; }                    \
                    T *at = row + (wo[i] >> 1) * s1 + 2 * i + (wo[i] & 1);                       \
                    if (mode == 0) *at = go[i]; else go[i] = *at;                                \
                }                                                                                \
            }                                                                                    \
        return 0;                                                                                \
    }                                                                                            \
    for (int64_t p = 0; p < P; p++) {                                                            \
        T *xp = gx + p * in;                                                                     \
        for (int64_t a = 0; a < o0; a++)                                                         \
            for (int64_t i = 0; i < o1; i++)                                                     \
                for (int64_t j = 0; j < o2; j++) {                                               \
                    const int64_t o = p * out + (a * o1 + i) * o2 + j, t = win[o];               \
                    if (t == NO_ROUTE) { if (mode) gy[o] = 0; continue; }                        \
                    T *at = xp + ((2 * a + (t >> 2)) * s1 + 2 * i + ((t >> 1) & 1)) * s2 + 2 * j + (t & 1); \
                    if (mode == 0) *at = gy[o]; else gy[o] = *at;                                \
                }                                                                                \
    }                                                                                            \
    return 0;                                                                                    \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
