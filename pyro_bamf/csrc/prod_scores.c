/* The NAIS `prod` attention score of BAMF for every (example, history item) pair, forward and
 * backward, in one pass over the pairs (see pyro_bamf/kernels.py):
 *
 *   A    = W (q * k) + b                   q (G, S, K), k (G, L, K), W (K, K), b (K)
 *   psi  = w_o . (keep * ReLU(LN(A))) + b_o
 *
 * The layer norm, dropout mask (same draws as the concat kernel) and projection are those of
 * concat_scores.c, included below; only the pre-activation A differs. W is passed as W and its
 * transpose WT so that both products run over contiguous rows.
 */
#include "concat_scores.c"

/* A = W (q * k) + b from WT (K, K), row m holding column m of W; x = q * k is kept */
static inline void prod_preactivation(const float *restrict q, const float *restrict k,
                                      const float *restrict wt, const float *restrict bias,
                                      float *restrict x, float *restrict a) {
    for (int j = 0; j < DIM; j++) a[j] = bias[j];
    for (int m = 0; m < DIM; m++) {
        x[m] = q[m] * k[m];
        for (int j = 0; j < DIM; j++) a[j] += x[m] * wt[m * DIM + j];
    }
}

void prod_scores_forward(
    const float *restrict q, const float *restrict k, const float *restrict wt,
    const float *restrict bias, const float *restrict gamma, const float *restrict beta,
    const float *restrict ow, const float *restrict ob, int64_t outputs, float eps,
    uint64_t seed, uint32_t threshold, int64_t g0, int64_t g1, int64_t S, int64_t L,
    float *restrict out)
{
    static const float zero[DIM] = {0};
    float x[DIM], a[DIM], n[DIM], h[DIM], keep[DIM];
    for (int64_t g = g0; g < g1; g++)
        for (int64_t s = 0; s < S; s++)
            for (int64_t l = 0; l < L; l++) {
                int64_t pair = (g * S + s) * L + l;
                prod_preactivation(q + (g * S + s) * DIM, k + (g * L + l) * DIM, wt, bias, x, a);
                features(a, zero, gamma, beta, eps, n, h);
                keep_mask(seed, pair, threshold, keep);
                project(h, keep, ow, ob, outputs, out + pair * outputs);
            }
}

/* Gradients for groups g0 <= g < g1: rows g of dq (G, S, K) and dk (G, L, K) (both must start
 * at zero), and this call's partial sums: dgamma, dbeta (K), dow (outputs, K), dob (outputs),
 * dwt (K, K: the gradient of WT) and dbias (K). */
void prod_scores_backward(
    const float *restrict q, const float *restrict k, const float *restrict w,
    const float *restrict wt, const float *restrict bias, const float *restrict gamma,
    const float *restrict beta, const float *restrict ow, int64_t outputs, float eps,
    uint64_t seed, uint32_t threshold, int64_t g0, int64_t g1, int64_t S, int64_t L,
    const float *restrict grad, float *restrict dq, float *restrict dk,
    float *restrict partial)
{
    static const float zero[DIM] = {0};
    float x[DIM], a[DIM], n[DIM], h[DIM], keep[DIM], da[DIM], dx[DIM], acc_bias[DIM] = {0};
    /* dWT (K, K) accumulates in place in this call's partial row: on the stack it would take
     * K^2 floats of an OpenMP thread's stack (64 MB at K = 4096, a crash) */
    float *p = partial + 2 * DIM + outputs * (DIM + 1);
    float *restrict acc_wt = p;
    for (int j = 0; j < DIM * DIM; j++) acc_wt[j] = 0.0f;
    head_grads acc = {0};
    for (int64_t g = g0; g < g1; g++)
        for (int64_t s = 0; s < S; s++) {
            const float *qv = q + (g * S + s) * DIM;
            float *dqv = dq + (g * S + s) * DIM;
            for (int64_t l = 0; l < L; l++) {
                int64_t pair = (g * S + s) * L + l;
                const float *go = grad + pair * outputs;
                if (!has_gradient(go, outputs)) continue;  /* padding, the target */
                const float *kv = k + (g * L + l) * DIM;
                prod_preactivation(qv, kv, wt, bias, x, a);
                float rstd = features(a, zero, gamma, beta, eps, n, h);
                keep_mask(seed, pair, threshold, keep);
                head_backward(go, outputs, ow, gamma, n, h, rstd, keep, &acc, da);
                for (int j = 0; j < DIM; j++) {
                    acc_bias[j] += da[j];
                    dx[j] = 0.0f;
                }
                for (int j = 0; j < DIM; j++) /* dx = W^T da, over rows of W */
                    for (int m = 0; m < DIM; m++) dx[m] += da[j] * w[j * DIM + m];
                for (int m = 0; m < DIM; m++) { /* dWT[m, :] += x[m] da */
                    for (int j = 0; j < DIM; j++) acc_wt[m * DIM + j] += x[m] * da[j];
                    dqv[m] += dx[m] * kv[m];
                }
                float *dkv = dk + (g * L + l) * DIM;
                for (int m = 0; m < DIM; m++) dkv[m] += dx[m] * qv[m];
            }
        }
    head_store(&acc, outputs, partial, partial + DIM, partial + 2 * DIM,
               partial + 2 * DIM + outputs * DIM);
    for (int j = 0; j < DIM; j++) p[DIM * DIM + j] = acc_bias[j];
}

void prod_scores_forward_all(
    const float *q, const float *k, const float *wt, const float *bias, const float *gamma,
    const float *beta, const float *ow, const float *ob, int64_t outputs, float eps,
    uint64_t seed, uint32_t threshold, int64_t G, int64_t chunk, int64_t S, int64_t L,
    float *out)
{
    int64_t chunks = (G + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t g1 = (c + 1) * chunk < G ? (c + 1) * chunk : G;
        prod_scores_forward(q, k, wt, bias, gamma, beta, ow, ob, outputs, eps, seed, threshold,
                            c * chunk, g1, S, L, out);
    }
}

void prod_scores_backward_all(
    const float *q, const float *k, const float *w, const float *wt, const float *bias,
    const float *gamma, const float *beta, const float *ow, int64_t outputs, float eps,
    uint64_t seed, uint32_t threshold, int64_t G, int64_t chunk, int64_t S, int64_t L,
    const float *grad, float *dq, float *dk, float *partial)
{
    int64_t chunks = (G + chunk - 1) / chunk;
    int64_t row = 2 * DIM + outputs * (DIM + 1) + DIM * DIM + DIM;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t g1 = (c + 1) * chunk < G ? (c + 1) * chunk : G;
        prod_scores_backward(q, k, w, wt, bias, gamma, beta, ow, outputs, eps, seed, threshold,
                             c * chunk, g1, S, L, grad, dq, dk, partial + c * row);
    }
}
