/* Fused CPU kernels of the cpu backend (spiking/backends/cpu.py) besides the neuron scans: the
 * pooling neuron's average pool and its gradient, the packing of a synapse's input spikes, the
 * Poisson input's spikes; loaded by spiking/backends/cpu_kernels.py. The neurons' scans are
 * generated from their own methods (spiking/backends/codegen) and compiled apart.
 *
 * The packing checks and converts in one pass instead of five; the average pool is PyTorch's
 * loop (same summation order), vectorised. Every value is computed with the same float
 * operations in the same order as the PyTorch code, so both give identical bits
 * (tests/test_cpu_kernels.py). Build flags: -ffp-contract=off keeps a*b+c from becoming a fused
 * multiply-add (different rounding); -fno-trapping-math lets the compiler turn the selects into
 * vector blends.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { BLOCK = 1024 };

#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* The arguments of every kernel; each thread gets a copy with its own [begin, end) range of
 * neurons (the last dimension of the [steps, neurons] arrays). */
typedef struct {
    int64_t steps, neurons, begin, end;
    /* pack_spikes (steps = 1) */
    const void *x;         /* [neurons] values, -c, 0 or c if spikes */
    double c;
    int8_t *codes;         /* [neurons] x / c */
    int other_values;      /* out: x holds a value other than -c, 0, c */
    /* avg_pool: [planes, height, width] -> [planes, height / k, width / k]; avg_pool_backward: the
     * reverse (neurons = planes) */
    const void *from;
    void *to;
    int64_t height, width, k;
    /* poisson_spikes: values holds the uniform draws in, the spikes out */
    void *values;          /* [steps, neurons] */
    const void *magnitude, *sign;  /* [neurons] |a * x| and sign(x) */
} Args;

/* codes = x / c for x in {-c, 0, c}, c > 0; flags any other value. */
#define DEFINE_PACK_SPIKES(NAME, T)                                                        \
    static void NAME(Args *a) {                                                            \
        const T c = (T)a->c;                                                                \
        const T *restrict x = (const T *)a->x;                                              \
        int8_t *restrict codes = a->codes;                                                  \
        const int64_t end = a->end;                                                         \
        int other = 0;                                                                      \
        for (int64_t i = a->begin; i < end; ++i) {                                          \
            const int8_t code = (int8_t)((x[i] == c) - (x[i] == -c));                       \
            codes[i] = code;                                                                \
            other |= (code == 0) & (x[i] != (T)0);                                          \
        }                                                                                   \
        a->other_values = other;                                                            \
    }                                                                                       \
    static double NAME##_magnitude(const void *values, int64_t n) {                         \
        const T *x = (const T *)values;                                                     \
        for (int64_t i = 0; i < n; ++i)                                                     \
            if (x[i] != (T)0) return fabs((double)x[i]);                                    \
        return 0.0;                                                                         \
    }

/* The signed Bernoulli spikes [steps, neurons] of one set of images, written over the uniform
 * draws u: [|a x| > u] * sign(x), in PyTorch's order (the comparison as 1 or 0, times the sign). */
#define DEFINE_POISSON_SPIKES(NAME, T)                                                     \
    static void NAME(Args *a) {                                                            \
        const T *restrict magnitude = (const T *)a->magnitude;                              \
        const T *restrict sign = (const T *)a->sign;                                        \
        for (int64_t t = 0; t < a->steps; ++t) {                                            \
            T *restrict u = (T *)a->values + t * a->neurons;                               \
            for (int64_t i = a->begin; i < a->end; ++i)                                     \
                u[i] = (T)(magnitude[i] > u[i]) * sign[i];                                  \
        }                                                                                   \
    }

/* Mean of each k x k window (stride k, the last rows and columns dropped if H or W is not a
 * multiple of k), summed row by row from 0 and divided by k * k, as PyTorch's avg_pool2d. */
#define DEFINE_AVG_POOL(NAME, T)                                                           \
    static void NAME(Args *a) {                                                            \
        const int64_t k = a->k, width = a->width, rows = a->height / k, cols = width / k;  \
        const T divisor = (T)(k * k);                                                       \
        for (int64_t p = a->begin; p < a->end; ++p) {                                       \
            const T *restrict image = (const T *)a->from + p * a->height * width;          \
            for (int64_t r = 0; r < rows; ++r) {                                            \
                T *restrict out = (T *)a->to + (p * rows + r) * cols;                   \
                if (k == 2) { /* the common window, in a loop the compiler vectorises */    \
                    const T *restrict top = image + 2 * r * width;                          \
                    const T *restrict bottom = top + width;                                 \
                    for (int64_t c = 0; c < cols; ++c)                                      \
                        out[c] = (((((T)0 + top[2 * c]) + top[2 * c + 1]) + bottom[2 * c])   \
                                  + bottom[2 * c + 1]) / divisor;                           \
                    continue;                                                               \
                }                                                                           \
                for (int64_t c = 0; c < cols; ++c) out[c] = (T)0;                           \
                for (int64_t i = r * k; i < r * k + k; ++i) {                               \
                    const T *restrict line = image + i * width;                             \
                    for (int64_t c = 0; c < cols; ++c)                                      \
                        for (int64_t j = 0; j < k; ++j) out[c] += line[c * k + j];          \
                }                                                                           \
                for (int64_t c = 0; c < cols; ++c) out[c] = out[c] / divisor;               \
            }                                                                               \
        }                                                                                   \
    }

/* The average pool's gradient: each pooled gradient divided by k * k (as PyTorch divides) and
 * copied to every pixel of its window, 0 to the dropped rows and columns. */
#define DEFINE_AVG_POOL_BACKWARD(NAME, T)                                                  \
    static void NAME(Args *a) {                                                            \
        const int64_t k = a->k, height = a->height, width = a->width;                      \
        const int64_t rows = height / k, cols = width / k;                                  \
        const T divisor = (T)(k * k);                                                       \
        for (int64_t p = a->begin; p < a->end; ++p) {                                       \
            const T *restrict pooled = (const T *)a->from + p * rows * cols;                \
            for (int64_t i = 0; i < height; ++i) {                                          \
                T *restrict line = (T *)a->to + (p * height + i) * width;                   \
                int64_t j = 0;                                                              \
                if (i < rows * k) {                                                         \
                    const T *restrict source = pooled + (i / k) * cols;                     \
                    if (k == 2)                                                             \
                        for (int64_t c = 0; c < cols; ++c)                                  \
                            line[2 * c] = line[2 * c + 1] = source[c] / divisor;            \
                    else                                                                    \
                        for (int64_t c = 0; c < cols; ++c)                                  \
                            for (int64_t jj = 0; jj < k; ++jj)                              \
                                line[c * k + jj] = source[c] / divisor;                     \
                    j = cols * k;                                                           \
                }                                                                           \
                for (; j < width; ++j) line[j] = (T)0;                                      \
            }                                                                               \
        }                                                                                   \
    }

DEFINE_PACK_SPIKES(pack_spikes_f32, float)
DEFINE_PACK_SPIKES(pack_spikes_f64, double)
DEFINE_AVG_POOL(avg_pool_f32, float)
DEFINE_AVG_POOL(avg_pool_f64, double)
DEFINE_AVG_POOL_BACKWARD(avg_pool_backward_f32, float)
DEFINE_AVG_POOL_BACKWARD(avg_pool_backward_f64, double)
DEFINE_POISSON_SPIKES(poisson_spikes_f32, float)
DEFINE_POISSON_SPIKES(poisson_spikes_f64, double)

/* Split the neurons into `threads` contiguous ranges, one per OpenMP thread (the runtime
 * PyTorch has loaded, so its thread pool is shared, not competed with); return whether any
 * range found other values (pack_spikes). */
static int run_parallel(void (*kernel)(Args *), Args args, int threads) {
    int other_values = 0;
    threads = threads < 1 ? 1 : threads;
#pragma omp parallel for num_threads(threads) reduction(| : other_values)
    for (int k = 0; k < threads; ++k) {
        Args range = args;
        range.begin = args.neurons * k / threads;
        range.end = args.neurons * (k + 1) / threads;
        kernel(&range);
        other_values |= range.other_values;
    }
    return other_values;
}

/* 1 if x holds only -c, 0 and c for one finite c >= 0 (the magnitude of its first nonzero),
 * with the codes x / c written and c stored in *scale; else 0. */
int pack_spikes(int is_double, const void *x, int8_t *codes, int64_t n, int threads,
                double *scale) {
    const double c = is_double ? pack_spikes_f64_magnitude(x, n) : pack_spikes_f32_magnitude(x, n);
    *scale = c;
    if (!isfinite(c)) return 0;
    if (c == 0.0) {
        memset(codes, 0, (size_t)n);
        return 1;
    }
    Args a = {.steps = 1, .neurons = n, .x = x, .c = c, .codes = codes};
    return !run_parallel(is_double ? pack_spikes_f64 : pack_spikes_f32, a, threads);
}

void avg_pool(int is_double, const void *image, void *pooled, int64_t planes, int64_t height,
              int64_t width, int64_t k, int threads) {
    Args a = {.neurons = planes, .from = image, .to = pooled, .height = height, .width = width,
              .k = k};
    run_parallel(is_double ? avg_pool_f64 : avg_pool_f32, a, threads);
}

void avg_pool_backward(int is_double, const void *pooled, void *image, int64_t planes,
                       int64_t height, int64_t width, int64_t k, int threads) {
    Args a = {.neurons = planes, .from = pooled, .to = image, .height = height, .width = width,
              .k = k};
    run_parallel(is_double ? avg_pool_backward_f64 : avg_pool_backward_f32, a, threads);
}

void poisson_spikes(int is_double, void *uniform, const void *magnitude, const void *sign,
                    int64_t steps, int64_t neurons, int threads) {
    Args a = {.steps = steps, .neurons = neurons, .values = uniform, .magnitude = magnitude,
              .sign = sign};
    run_parallel(is_double ? poisson_spikes_f64 : poisson_spikes_f32, a, threads);
}
