/* Fused CPU kernels for second-order meta-learning: the tail of a conv block, relu(max_pool(
 * group_norm(x))), as one function with its backward and the backward of that backward, each a
 * few passes over memory instead of the dozens of elementwise passes of PyTorch's
 * differentiable composite. The normalized map is never stored; gradients with respect to it
 * are nonzero only at each pooling window's maximum, so those terms are computed sparsely.
 *
 * Layout: contiguous (N, C, L) with L = prod(spatial); G groups of C/G channels. Reductions
 * accumulate in double. Single-threaded: fedmeta runs tasks side by side, one thread each (see
 * common/algorithms/).
 * Every function exists for float (suffix _f32) and double (_f64): native/build.py compiles this
 * one file twice, with -DFEDMETA_REAL=float -DFEDMETA_SUFFIX=f32 and with double/f64, and links
 * both objects into one library. `real` is the scalar type; FN(name) only names functions, so
 * every body below is ordinary code on its own lines (for compiler messages and debuggers).
 * `omp simd` pragmas (compiled with -fopenmp-simd: no OpenMP runtime) vectorize the sums.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(FEDMETA_REAL) || !defined(FEDMETA_SUFFIX)
#error "compile with -DFEDMETA_REAL=float -DFEDMETA_SUFFIX=f32 (or double and f64): see native/build.py"
#endif

typedef FEDMETA_REAL real;
#define FN_JOIN(name, suffix) name##_##suffix
#define FN_EXPAND(name, suffix) FN_JOIN(name, suffix)
#define FN(name) FN_EXPAND(name, FEDMETA_SUFFIX) /* FN(gnpool_forward) is gnpool_forward_f32 */

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline))
#else
#define ALWAYS_INLINE inline
#define NOINLINE
#endif

#define NO_ROUTE 255

/* The 2^d max-pooling windows (stride 2, floor mode) of one s0 x s1 (x s2) plane, outputs in
 * row-major order. Window (a, i, j) (j = 0 in 2D) has its first element at window_corner, its
 * t-th element (row-major within the window; t is what `win` stores) at that + window_tap. */
typedef struct {
    int64_t s1, s2;     /* s2 = 1 in 2D */
    int64_t o0, o1, o2; /* windows along each axis; o2 = 1 in 2D */
    int64_t in, out;    /* elements and windows per plane */
    int64_t tap[8];     /* offset of the window's t-th element from its first (4 used in 2D) */
} pool_grid;

static pool_grid pool_grid_of(int64_t d, int64_t s0, int64_t s1, int64_t s2) {
    pool_grid g;
    if (d == 2) s2 = 1;
    g.s1 = s1;
    g.s2 = s2;
    g.o0 = s0 / 2;
    g.o1 = s1 / 2;
    g.o2 = d == 3 ? s2 / 2 : 1;
    g.in = s0 * s1 * s2;
    g.out = g.o0 * g.o1 * g.o2;
    for (int t = 0; t < 8; t++)
        g.tap[t] = d == 3 ? ((t >> 2) * s1 + ((t >> 1) & 1)) * s2 + (t & 1) : (t >> 1) * s1 + (t & 1);
    return g;
}

/* The window helpers take the dimension D as a constant: the always-inline per-plane walkers
 * below are instantiated for D = 2 and D = 3, so in 2D the compiler knows the shape (two loops,
 * no third axis, corner 2 a s1 + 2 i); the forward's 2D path is pool_row2, vectorized. */
static ALWAYS_INLINE int64_t window_corner(const int D, const pool_grid *g, int64_t a, int64_t i, int64_t j) {
    return D == 2 ? 2 * a * g->s1 + 2 * i : (2 * a * g->s1 + 2 * i) * g->s2 + 2 * j;
}

static ALWAYS_INLINE int64_t window_tap(const pool_grid *g, int t) {
    return g->tap[t];
}

/* per (n, g): mean and 1/sqrt(var + eps), two passes (the group is small enough to stay in
 * cache for the second) */
static void FN(gn_stats)(const real *x, real *mean, real *rstd, int64_t N, int64_t C, int64_t L, int64_t G,
                         double eps) {
    const int64_t cg = C / G, M = cg * L;
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++) {
            const real *xs = x + (n * C + g * cg) * L;
            double s = 0;
#pragma omp simd reduction(+:s)
            for (int64_t i = 0; i < M; i++) s += xs[i];
            const double mu = s / M;
            double v = 0;
#pragma omp simd reduction(+:v)
            for (int64_t i = 0; i < M; i++) {
                double dv = xs[i] - mu;
                v += dv * dv;
            }
            mean[n * G + g] = (real)mu;
            rstd[n * G + g] = (real)(1.0 / sqrt(v / M + eps));
        }
}

/* one row of 2x2 windows of relu(A + B v) from rows r0, r1: the first maximum, or the last NaN
 * (NO_ROUTE where the maximum is <= 0). The main loop selects in float lanes without branches
 * (vectorized); a row holding a NaN is redone by the exact scalar rule. */
static inline void FN(pool_row2)(const real *restrict r0, const real *restrict r1, real *restrict y,
                                 uint8_t *restrict win, int64_t n, real A, real B) {
    real kf[n];
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        const real v0 = A + B * r0[2 * i], v1 = A + B * r0[2 * i + 1];
        const real v2 = A + B * r1[2 * i], v3 = A + B * r1[2 * i + 1];
        const real a = v0 >= v1 ? v0 : v1, b = v2 >= v3 ? v2 : v3, m = a >= b ? a : b;
        const real k = v0 == m ? 0 : v1 == m ? 1 : v2 == m ? 2 : 3;
        bad |= (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3);
        y[i] = m > 0 ? m : 0;
        kf[i] = m > 0 ? k : NO_ROUTE;
    }
    for (int64_t i = 0; i < n; i++) win[i] = (uint8_t)kf[i];
    if (!bad) return;
    for (int64_t i = 0; i < n; i++) {
        const real v[4] = {r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1]};
        real m = A + B * v[0];
        uint8_t best = 0;
        for (int t = 1; t < 4; t++) {
            const real e = A + B * v[t];
            if (e > m || isnan(e)) {
                m = e;
                best = (uint8_t)t;
            }
        }
        if (!(m > 0) && !isnan(m)) {
            m = 0;
            best = NO_ROUTE;
        }
        y[i] = m;
        win[i] = best;
    }
}

/* one plane of 2x2x2 windows of relu(A + B v), by the same rule as pool_row2's scalar pass
 * (kept out of line: inlined into gnpool_forward, its branches are laid out worse, ~5% slower) */
static NOINLINE void FN(pool_plane3)(const real *xp, real *yp, uint8_t *wp, const pool_grid g, real A, real B) {
    int64_t o = 0;
    for (int64_t a = 0; a < g.o0; a++)
        for (int64_t i = 0; i < g.o1; i++)
            for (int64_t j = 0; j < g.o2; j++, o++) {
                const int64_t corner = window_corner(3, &g, a, i, j);
                real m = A + B * xp[corner];
                uint8_t best = 0;
                for (int t = 1; t < 8; t++) {
                    const real v = A + B * xp[corner + window_tap(&g, t)];
                    if (v > m || isnan(v)) {
                        m = v;
                        best = (uint8_t)t;
                    }
                }
                if (!(m > 0) && !isnan(m)) {
                    m = 0;
                    best = NO_ROUTE;
                }
                yp[o] = m;
                wp[o] = best;
            }
}

/* Group norm, then 2^d max-pool, then ReLU, as one function of x (see native/ops.py): the
 * normalized map is never stored, and the backward touches the gradient only at each window's
 * maximum. Windows: plane p (= n * C + c) of s0 x s1 (x s2), outputs in row-major order. */
int FN(gnpool_forward)(const real *x, const real *w, const real *b, real *y, uint8_t *win, real *mean, real *rstd,
                       int64_t N, int64_t C, int64_t G, double eps, int64_t d, int64_t s0, int64_t s1, int64_t s2) {
    const pool_grid grid = pool_grid_of(d, s0, s1, s2);
    const int64_t in = grid.in, out = grid.out;
    FN(gn_stats)(x, mean, rstd, N, C, in, G, eps);
    for (int64_t p = 0; p < N * C; p++) {
        const int64_t c = p % C, ng = (p / C) * G + c / (C / G);
        const real B = (real)((double)rstd[ng] * (w ? w[c] : 1));
        const real A = (real)((b ? b[c] : 0) - (double)mean[ng] * rstd[ng] * (w ? w[c] : 1));
        const real *xp = x + p * in;
        real *yp = y + p * out;
        uint8_t *wp = win + p * out;
        if (d == 2) {
            for (int64_t a = 0; a < grid.o0; a++)
                FN(pool_row2)(xp + 2 * a * s1, xp + (2 * a + 1) * s1, yp + a * grid.o1, wp + a * grid.o1, grid.o1, A, B);
        } else {
            FN(pool_plane3)(xp, yp, wp, grid, A, B);
        }
    }
    return 0;
}

/* one plane's sums over its routed maxima: sp[0] = sum gy, sp[1] = sum gy xh, sp[2] = sum gy u */
static ALWAYS_INLINE void FN(sparse_sums_plane)(const int D, const pool_grid g, const real *xp, const real *up,
                                                const real *gp, const uint8_t *wp, double mu, double r, double *sp) {
    double a0 = 0, a1 = 0, a2 = 0;
    int64_t o = 0;
    for (int64_t a = 0; a < g.o0; a++)
        for (int64_t i = 0; i < g.o1; i++)
            for (int64_t j = 0; j < (D == 2 ? 1 : g.o2); j++, o++) {
                if (wp[o] == NO_ROUTE) continue;
                const int64_t e = window_corner(D, &g, a, i, j) + window_tap(&g, wp[o]);
                const double gv = gp[o];
                a0 += gv;
                a1 += gv * (xp[e] - mu) * r;
                if (up) a2 += gv * up[e];
            }
    sp[0] = a0;
    sp[1] = a1;
    sp[2] = a2;
}

/* sparse per-channel sums over the routed maxima: s[0] += gy, s[1] += gy xh, s[2] += gy u */
static void FN(gnpool_sparse_sums)(const real *x, const real *gy, const uint8_t *win, const real *u, const real *mean,
                                   const real *rstd, double *sums, int64_t N, int64_t C, int64_t G, int64_t d,
                                   int64_t s0, int64_t s1, int64_t s2) {
    const pool_grid grid = pool_grid_of(d, s0, s1, s2);
    const int64_t in = grid.in, out = grid.out;
    for (int64_t p = 0; p < N * C; p++) {
        const int64_t c = p % C, ng = (p / C) * G + c / (C / G);
        const double mu = mean[ng], r = rstd[ng];
        const real *xp = x + p * in, *up = u ? u + p * in : NULL, *gp = gy + p * out;
        const uint8_t *wp = win + p * out;
        if (d == 2)
            FN(sparse_sums_plane)(2, grid, xp, up, gp, wp, mu, r, sums + p * 5);
        else
            FN(sparse_sums_plane)(3, grid, xp, up, gp, wp, mu, r, sums + p * 5);
    }
}

/* one plane: op[e] += kc * gp[o] at the routed maximum e of each window o */
static ALWAYS_INLINE void FN(scatter_add_plane)(const int D, const pool_grid g, real *op, const real *gp,
                                                const uint8_t *wp, real kc) {
    int64_t o = 0;
    for (int64_t a = 0; a < g.o0; a++)
        for (int64_t i = 0; i < g.o1; i++)
            for (int64_t j = 0; j < (D == 2 ? 1 : g.o2); j++, o++)
                if (wp[o] != NO_ROUTE) op[window_corner(D, &g, a, i, j) + window_tap(&g, wp[o])] += kc * gp[o];
}

/* dst[e] += k[p] * gy[o] at the routed maximum e of each window o of each plane p */
static void FN(gnpool_scatter_add)(real *dst, const real *gy, const uint8_t *win, const double *k, int64_t N,
                                   int64_t C, int64_t d, int64_t s0, int64_t s1, int64_t s2) {
    const pool_grid grid = pool_grid_of(d, s0, s1, s2);
    const int64_t in = grid.in, out = grid.out;
    for (int64_t p = 0; p < N * C; p++) {
        const real kc = (real)k[p];
        if (d == 2)
            FN(scatter_add_plane)(2, grid, dst + p * in, gy + p * out, win + p * out, kc);
        else
            FN(scatter_add_plane)(3, grid, dst + p * in, gy + p * out, win + p * out, kc);
    }
}

int FN(gnpool_backward)(const real *x, const real *gy, const uint8_t *win, const real *w, const real *mean,
                        const real *rstd, real *gx, real *gw, real *gb, int64_t N, int64_t C, int64_t G, int64_t d,
                        int64_t s0, int64_t s1, int64_t s2) {
    const int64_t L = s0 * s1 * (d == 3 ? s2 : 1), cg = C / G, M = cg * L;
    double *sums = calloc(N * C * 5, sizeof(double)), *k1 = malloc(sizeof(double) * N * C);
    if (!sums || !k1) {
        free(sums);
        free(k1);
        return 1;
    }
    FN(gnpool_sparse_sums)(x, gy, win, NULL, mean, rstd, sums, N, C, G, d, s0, s1, s2);
    for (int64_t c = 0; c < C; c++) {
        double sw = 0, sb = 0;
        for (int64_t n = 0; n < N; n++) {
            sb += sums[(n * C + c) * 5];
            sw += sums[(n * C + c) * 5 + 1];
        }
        gw[c] = (real)sw;
        gb[c] = (real)sb;
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++) {
            double a = 0, bb = 0;
            for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
                const double wc = w ? w[c] : 1;
                a += wc * sums[(n * C + c) * 5];
                bb += wc * sums[(n * C + c) * 5 + 1];
            }
            a /= M;
            bb /= M;
            const double mu = mean[n * G + g], r = rstd[n * G + g];
            for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
                /* gx = k1 gy + k2 x + k3: dense part here, k1 gy at the maxima below */
                const real k2 = (real)(-r * r * bb), k3 = (real)(r * (bb * r * mu - a));
                k1[n * C + c] = r * (w ? w[c] : 1);
                const real *xc = x + (n * C + c) * L;
                real *oc = gx + (n * C + c) * L;
                for (int64_t i = 0; i < L; i++) oc[i] = k2 * xc[i] + k3;
            }
        }
    FN(gnpool_scatter_add)(gx, gy, win, k1, N, C, d, s0, s1, s2);
    free(sums);
    free(k1);
    return 0;
}

/* the pooling part of the double backward, one plane: ggy = k0 + k1 xh + k2 u gathered from each
 * window's maximum (0 where nothing is routed), and gx2 += k3 gy scattered to it */
static ALWAYS_INLINE void FN(route_back_plane)(const int D, const pool_grid g, const real *xp, const real *up,
                                               const real *gp, const uint8_t *wp, const double *k, double mu,
                                               double r, real *op, real *xo) {
    int64_t o = 0;
    for (int64_t a = 0; a < g.o0; a++)
        for (int64_t i = 0; i < g.o1; i++)
            for (int64_t j = 0; j < (D == 2 ? 1 : g.o2); j++, o++) {
                if (wp[o] == NO_ROUTE) {
                    op[o] = 0;
                    continue;
                }
                const int64_t e = window_corner(D, &g, a, i, j) + window_tap(&g, wp[o]);
                op[o] = (real)(k[0] + k[1] * (xp[e] - mu) * r + (up ? k[2] * up[e] : 0));
                xo[e] += (real)(k[3] * gp[o]);
            }
}

/* The backward of gnpool_backward: gn_double_backward with gy scattered to the maxima, and
 * dL/dgy gathered back from them. */
int FN(gnpool_double_backward)(const real *x, const real *gy, const uint8_t *win, const real *w, const real *mean,
                               const real *rstd, const real *u, const real *ugw, const real *ugb, real *ggy,
                               real *gx2, real *gw2, int64_t N, int64_t C, int64_t G, int64_t d, int64_t s0,
                               int64_t s1, int64_t s2) {
    const pool_grid grid = pool_grid_of(d, s0, s1, s2);
    const int64_t L = grid.in, cg = C / G, M = cg * L;
    double *sums = calloc(N * C * 5, sizeof(double)), *gwacc = calloc(C, sizeof(double));
    double *coef = malloc(sizeof(double) * N * C * 4); /* p0, p1, p2, q2 per plane */
    if (!sums || !gwacc || !coef) {
        free(sums);
        free(gwacc);
        free(coef);
        return 1;
    }
    FN(gnpool_sparse_sums)(x, gy, win, u, mean, rstd, sums, N, C, G, d, s0, s1, s2);
    if (u) {
        for (int64_t p = 0; p < N * C; p++) {
            const int64_t ng = (p / C) * G + (p % C) / cg;
            const double mu = mean[ng], r = rstd[ng];
            const real *xc = x + p * L, *uc = u + p * L;
            double s3 = 0, s4 = 0;
#pragma omp simd reduction(+:s3,s4)
            for (int64_t i = 0; i < L; i++) {
                const double uv = uc[i];
                s3 += uv;
                s4 += uv * (xc[i] - mu) * r;
            }
            sums[p * 5 + 3] = s3;
            sums[p * 5 + 4] = s4;
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++) {
            double a = 0, bb = 0, mu_ = 0, cu = 0, mud = 0, mgg = 0, mggx = 0;
            for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
                const double *s = sums + (n * C + c) * 5, wc = w ? w[c] : 1;
                const double Gc = ugw ? ugw[c] : 0;
                a += wc * s[0];
                bb += wc * s[1];
                mud += wc * s[2];
                mu_ += s[3];
                cu += s[4];
                mgg += Gc * s[0];
                mggx += Gc * s[1];
            }
            a /= M;
            bb /= M;
            mud /= M;
            mu_ /= M;
            cu /= M;
            mgg /= M;
            mggx /= M;
            const double mu = mean[n * G + g], r = rstd[n * G + g];
            const double rbar = M * (mud - a * mu_ - bb * cu);
            const double mX = mgg - r * (bb * mu_ + cu * a), mXx = mggx - 2 * r * bb * cu;
            for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
                const int64_t p = n * C + c;
                const double *s = sums + p * 5;
                gwacc[c] += r * (s[2] - mu_ * s[0] - cu * s[1]);
                const double wc = w ? w[c] : 1, Gc = ugw ? ugw[c] : 0, Bc = ugb ? ugb[c] : 0;
                double *k = coef + p * 4;
                k[0] = Bc - wc * r * mu_;
                k[1] = Gc - wc * r * cu;
                k[2] = wc * r;
                k[3] = r * (Gc - r * cu * wc);
                /* gx2 = q0 + q1 xh + q3 u densely; q2 gy at the maxima below */
                const real q0 = (real)(-r * mX), q1 = (real)(-r * mXx - r * r * rbar / M), q3 = (real)(-r * r * bb);
                const real tm = (real)mu, tr = (real)r;
                const real *xc = x + p * L, *uc = u ? u + p * L : NULL;
                real *oc = gx2 + p * L;
                if (uc) {
                    for (int64_t i = 0; i < L; i++) oc[i] = q0 + q1 * (xc[i] - tm) * tr + q3 * uc[i];
                } else {
                    for (int64_t i = 0; i < L; i++) oc[i] = q0 + q1 * (xc[i] - tm) * tr;
                }
            }
        }
    for (int64_t p = 0; p < N * C; p++) {
        const int64_t ng = (p / C) * G + (p % C) / cg;
        const double mu = mean[ng], r = rstd[ng], *k = coef + p * 4;
        const real *xp = x + p * L, *up = u ? u + p * L : NULL, *gp = gy + p * grid.out;
        const uint8_t *wp = win + p * grid.out;
        real *op = ggy + p * grid.out, *xo = gx2 + p * L;
        if (d == 2)
            FN(route_back_plane)(2, grid, xp, up, gp, wp, k, mu, r, op, xo);
        else
            FN(route_back_plane)(3, grid, xp, up, gp, wp, k, mu, r, op, xo);
    }
    for (int64_t c = 0; c < C; c++) gw2[c] = (real)gwacc[c];
    free(sums);
    free(gwacc);
    free(coef);
    return 0;
}
