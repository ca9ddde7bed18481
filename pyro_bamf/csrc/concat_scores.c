/* The NAIS `concat` attention score of BAMF for every (example, history item) pair, forward and
 * backward, in one pass over the pairs (see pyro_bamf/kernels.py).
 *
 *   A    = a_q + a_k                       a_q = W_q q + b (G, S, K), a_k = W_k k (G, L, K)
 *   n    = (A - mean(A)) / sqrt(var(A) + eps)
 *   h    = gamma * n + beta                the layer norm
 *   y    = keep * ReLU(h)                  inverted dropout; 1 / keep_prob is folded into w
 *   psi  = w_o . y + b_o                   o < outputs (1, or 2 with a learned guide spread)
 *
 * No (pair, K) tensor is ever stored: the backward pass recomputes A, n, h and the dropout mask
 * from the inputs and the seed. The mask of element e = pair * K + k keeps it when the top 16
 * bits of lowbias32(e * golden + seed_lo ^ seed_hi) fall below `threshold` (keep probability
 * threshold / 2^16, the resolution of pyro_bamf.attention.keep_mask).
 *
 * Compiled with -DDIM=K. Groups g0 <= g < g1 are one call's share; each call writes its own
 * rows of the outputs and its own partial parameter gradients, so calls run in parallel.
 */
#include <math.h>
#include <stdint.h>

#ifndef DIM
#error "compile with -DDIM=<embedding dimension>"
#endif
#define MAX_OUTPUTS 2

static inline void keep_mask(uint64_t seed, int64_t pair, uint32_t threshold, float *keep) {
    uint32_t key_lo = (uint32_t)seed, key_hi = (uint32_t)(seed >> 32);
    uint32_t base = (uint32_t)(pair * DIM);
    for (int k = 0; k < DIM; k++) {
        uint32_t x = ((base + (uint32_t)k) * 0x9E3779B9u + key_lo) ^ key_hi;
        x ^= x >> 16;
        x *= 0x7FEB352Du;
        x ^= x >> 15;
        x *= 0x846CA68Bu;
        x ^= x >> 16;
        keep[k] = (x >> 16) < threshold ? 1.0f : 0.0f;
    }
}

/* n and h of A = aq + ak; returns 1 / sqrt(var(A) + eps) */
static inline float features(const float *restrict aq, const float *restrict ak,
                             const float *restrict gamma, const float *restrict beta, float eps,
                             float *restrict n, float *restrict h) {
    float a[DIM], mean = 0.0f, var = 0.0f;
    for (int k = 0; k < DIM; k++) {
        a[k] = aq[k] + ak[k];
        mean += a[k];
    }
    mean *= 1.0f / DIM;
    for (int k = 0; k < DIM; k++) {
        a[k] -= mean;
        var += a[k] * a[k];
    }
    float rstd = 1.0f / sqrtf(var * (1.0f / DIM) + eps);
    for (int k = 0; k < DIM; k++) {
        n[k] = a[k] * rstd;
        h[k] = n[k] * gamma[k] + beta[k];
    }
    return rstd;
}

/* whether any of a pair's incoming gradients is nonzero */
static inline int has_gradient(const float *go, int64_t outputs) {
    for (int64_t o = 0; o < outputs; o++)
        if (go[o] != 0.0f) return 1;
    return 0;
}

/* The layer-norm and projection gradients of a chunk, summed over its pairs */
typedef struct {
    float gamma[DIM], beta[DIM], w[MAX_OUTPUTS][DIM], b[MAX_OUTPUTS];
} head_grads;

/* d A of one pair into da, from d psi (go), n, h, rstd and the pair's keep mask (overwritten
 * with d y / d h); adds the pair's layer-norm and projection gradients to acc */
static inline void head_backward(const float *restrict go, int64_t outputs,
                                 const float *restrict ow, const float *restrict gamma,
                                 const float *restrict n, const float *restrict h, float rstd,
                                 float *restrict keep, head_grads *restrict acc,
                                 float *restrict da) {
    float dh[DIM], dn[DIM];
    for (int k = 0; k < DIM; k++) {
        keep[k] = h[k] > 0.0f ? keep[k] : 0.0f;  /* d y / d h */
        dh[k] = 0.0f;
    }
    for (int64_t o = 0; o < outputs; o++) {
        const float *w = ow + o * DIM;
        for (int k = 0; k < DIM; k++) {
            acc->w[o][k] += go[o] * (h[k] * keep[k]);
            dh[k] += go[o] * w[k];
        }
        acc->b[o] += go[o];
    }
    float m1 = 0.0f, m2 = 0.0f;
    for (int k = 0; k < DIM; k++) {
        dh[k] *= keep[k];
        acc->gamma[k] += dh[k] * n[k];
        acc->beta[k] += dh[k];
        dn[k] = dh[k] * gamma[k];
        m1 += dn[k];
        m2 += dn[k] * n[k];
    }
    m1 *= 1.0f / DIM;
    m2 *= 1.0f / DIM;
    for (int k = 0; k < DIM; k++) da[k] = rstd * (dn[k] - m1 - n[k] * m2);
}

/* A chunk's summed gradients into dgamma, dbeta (K), dow (outputs, K), dob (outputs) */
static inline void head_store(const head_grads *acc, int64_t outputs, float *dgamma,
                              float *dbeta, float *dow, float *dob) {
    for (int k = 0; k < DIM; k++) {
        dgamma[k] = acc->gamma[k];
        dbeta[k] = acc->beta[k];
    }
    for (int64_t o = 0; o < outputs; o++) {
        for (int k = 0; k < DIM; k++) dow[o * DIM + k] = acc->w[o][k];
        dob[o] = acc->b[o];
    }
}

/* psi_o = w_o . (keep * ReLU(h)) + b_o for o < outputs, into out */
static inline void project(const float *restrict h, const float *restrict keep,
                           const float *restrict ow, const float *restrict ob, int64_t outputs,
                           float *restrict out) {
    for (int64_t o = 0; o < outputs; o++) {
        const float *w = ow + o * DIM;
        float acc = 0.0f;
        for (int k = 0; k < DIM; k++) acc += (h[k] > 0.0f ? h[k] : 0.0f) * keep[k] * w[k];
        out[o] = acc + ob[o];
    }
}

/* psi (G, S, L, outputs) for groups g0 <= g < g1 */
void concat_scores_forward(
    const float *restrict aq, const float *restrict ak, const float *restrict gamma,
    const float *restrict beta, const float *restrict ow, const float *restrict ob,
    int64_t outputs, float eps, uint64_t seed, uint32_t threshold,
    int64_t g0, int64_t g1, int64_t S, int64_t L, float *restrict out)
{
    float n[DIM], h[DIM], keep[DIM];
    for (int64_t g = g0; g < g1; g++)
        for (int64_t s = 0; s < S; s++) {
            const float *q = aq + (g * S + s) * DIM;
            for (int64_t l = 0; l < L; l++) {
                int64_t pair = (g * S + s) * L + l;
                features(q, ak + (g * L + l) * DIM, gamma, beta, eps, n, h);
                keep_mask(seed, pair, threshold, keep);
                project(h, keep, ow, ob, outputs, out + pair * outputs);
            }
        }
}

/* Gradients for groups g0 <= g < g1 from d psi (G, S, L, outputs): writes rows g of daq
 * (G, S, K) and dak (G, L, K) (dak must start at zero) and this call's partial sums of the
 * parameter gradients dgamma, dbeta (K), dow (outputs, K), dob (outputs). Pairs whose incoming
 * gradient is zero (padding, the target) are skipped. */
void concat_scores_backward(
    const float *restrict aq, const float *restrict ak, const float *restrict gamma,
    const float *restrict beta, const float *restrict ow, int64_t outputs, float eps,
    uint64_t seed, uint32_t threshold, int64_t g0, int64_t g1, int64_t S, int64_t L,
    const float *restrict grad, float *restrict daq, float *restrict dak,
    float *restrict dgamma, float *restrict dbeta, float *restrict dow, float *restrict dob)
{
    float n[DIM], h[DIM], keep[DIM], da[DIM], dq[DIM];
    head_grads acc = {0};
    for (int64_t g = g0; g < g1; g++)
        for (int64_t s = 0; s < S; s++) {
            const float *q = aq + (g * S + s) * DIM;
            for (int k = 0; k < DIM; k++) dq[k] = 0.0f;
            for (int64_t l = 0; l < L; l++) {
                int64_t pair = (g * S + s) * L + l;
                const float *go = grad + pair * outputs;
                if (!has_gradient(go, outputs)) continue;  /* padding, the target */
                float rstd = features(q, ak + (g * L + l) * DIM, gamma, beta, eps, n, h);
                keep_mask(seed, pair, threshold, keep);
                head_backward(go, outputs, ow, gamma, n, h, rstd, keep, &acc, da);
                float *dk = dak + (g * L + l) * DIM;
                for (int k = 0; k < DIM; k++) {
                    dq[k] += da[k];
                    dk[k] += da[k];
                }
            }
            for (int k = 0; k < DIM; k++) daq[(g * S + s) * DIM + k] = dq[k];
        }
    head_store(&acc, outputs, dgamma, dbeta, dow, dob);
}

/* The dropout keep mask (pairs, K) the two passes use, as bytes (for tests and inspection). */
void concat_dropout_mask(uint64_t seed, uint32_t threshold, int64_t pairs, uint8_t *mask) {
    float keep[DIM];
    for (int64_t p = 0; p < pairs; p++) {
        keep_mask(seed, p, threshold, keep);
        for (int k = 0; k < DIM; k++) mask[p * DIM + k] = keep[k] != 0.0f;
    }
}

/* The passes over all groups, split into chunks of `chunk` groups run in parallel under
 * OpenMP (torch's own runtime once loaded into a torch process: no second thread pool).
 * Chunk c's parameter gradients go to row c of `partial` (dgamma, dbeta, dow, dob), summed
 * by the caller in chunk order, so results do not depend on the number of threads. */
void concat_scores_forward_all(
    const float *aq, const float *ak, const float *gamma, const float *beta, const float *ow,
    const float *ob, int64_t outputs, float eps, uint64_t seed, uint32_t threshold,
    int64_t G, int64_t chunk, int64_t S, int64_t L, float *out)
{
    int64_t chunks = (G + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t g1 = (c + 1) * chunk < G ? (c + 1) * chunk : G;
        concat_scores_forward(aq, ak, gamma, beta, ow, ob, outputs, eps, seed, threshold,
                              c * chunk, g1, S, L, out);
    }
}

void concat_scores_backward_all(
    const float *aq, const float *ak, const float *gamma, const float *beta, const float *ow,
    int64_t outputs, float eps, uint64_t seed, uint32_t threshold, int64_t G, int64_t chunk,
    int64_t S, int64_t L, const float *grad, float *daq, float *dak, float *partial)
{
    int64_t chunks = (G + chunk - 1) / chunk;
    int64_t row = 2 * DIM + outputs * (DIM + 1);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t g1 = (c + 1) * chunk < G ? (c + 1) * chunk : G;
        float *p = partial + c * row;
        concat_scores_backward(aq, ak, gamma, beta, ow, outputs, eps, seed, threshold,
                               c * chunk, g1, S, L, grad, daq, dak, p, p + DIM, p + 2 * DIM,
                               p + 2 * DIM + outputs * DIM);
    }
}

/* The gradient of a row lookup out = table[index]: d_table (rows, dim), which must start at
 * zero, gets grad[i] added at row index[i] in increasing i, the order of torch's
 * embedding_dense_backward on CPU (so the sums are bit-identical) without its per-row
 * TensorIterator call. */
void gather_rows_backward(const int64_t *restrict index, int64_t n, const float *restrict grad,
                          int64_t dim, float *restrict d_table)
{
    for (int64_t i = 0; i < n; i++) {
        float *row = d_table + index[i] * dim;
        const float *g = grad + i * dim;
        for (int64_t d = 0; d < dim; d++) row[d] += g[d];
    }
}
