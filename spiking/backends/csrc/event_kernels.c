/* Event-driven synapses of the cpu backend (spiking/backends/cpu.py): a convolution or linear
 * layer whose input is a spike train, computed from its spikes alone; loaded by
 * spiking/backends/event_kernels.py.
 *
 * A spike train x [images, C_in, H, W] holds -c, 0 or c. Its events are stored per image (an
 * image is one time step of one sample) as int32 positions ci * H * W + iy * W + ix, negated
 * minus one (~p) for a -c spike, in image order: offsets [images + 1] into positions. A linear
 * layer is the 1x1 convolution with H = W = 1.
 *
 * The weight comes re-laid channels-last, w[ci, ky, kx, co], so every product below runs over
 * C_out contiguous floats:
 *   forward      out[n, co, oy, ox] = sum over events (ci, iy, ix) of +-c w[ci, ky, kx, co],
 *                oy * stride = iy + pad - ky (the scatter of each event's weight columns);
 *   weight grad  dw[ci, ky, kx, co] += +-c g[n, co, oy, ox] for every event and tap;
 *   input grad   dx[n, ci, iy, ix] = sum over taps and co of w[ci, ky, kx, co] g[n, co, oy, ox],
 *                at the events only (0 elsewhere).
 * Each thread takes the images holding an equal share of the events, accumulates an image's
 * output (or reads its gradient) channels-last in its own buffer, and owns a private weight
 * gradient, summed at the end: no atomics. Build flags as cpu_kernels.c (-ffp-contract=off).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_K = 32, MAX_THREADS = 256 };  /* event_kernels.py refuses larger kernels */

typedef struct {
    int64_t images, cin, height, width, cout, k, stride, pad, out_h, out_w;
} Geometry;

/* The first image of thread `part` of `parts`: images split at equal shares of the events. */
static int64_t first_image(const int64_t *offsets, int64_t images, int part, int parts) {
    const int64_t total = offsets[images], goal = total * part / parts;
    int64_t lo = 0, hi = images;  /* first n with offsets[n] >= goal */
    if (part == 0) return 0;
    if (part == parts) return images;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (offsets[mid] < goal) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* One image's events, from entry `i` on, appended to out[count...] while there is room (entries
 * past `room` are counted, not written): returns the new count. *c is the spike magnitude, 0
 * until the first nonzero sets it; *other is set, and the scan stops, at a nonzero that is not
 * +-c or at a magnitude that is not finite. */
#define DEFINE_SCAN_TAIL(NAME, IMAGE, T)                                                        \
    static int64_t NAME(const T *restrict x, int64_t i, int64_t size, int32_t *restrict out,    \
                        int64_t count, int64_t room, T *c, int *other) {                        \
        T mag = *c;                                                                             \
        for (; i < size; ++i) {                                                                 \
            const T v = x[i];                                                                   \
            if (v == (T)0) continue;                                                            \
            if (mag == (T)0 && !isfinite(mag = fabs(v))) { *other = 1; break; }                 \
            if (v != mag && v != -mag) { *other = 1; break; }                                   \
            if (count < room) out[count] = v > (T)0 ? (int32_t)i : ~(int32_t)i;                 \
            ++count;                                                                            \
        }                                                                                       \
        *c = mag;                                                                               \
        return count;                                                                           \
    }                                                                                           \
    /* A whole image's events (the portable scan). */                                           \
    static int64_t IMAGE(const T *x, int64_t size, int32_t *out, int64_t room, T *c,            \
                         int *other) {                                                          \
        return NAME(x, 0, size, out, 0, room, c, other);                                        \
    }

DEFINE_SCAN_TAIL(scan_tail_f32, scan_image_f32, float)
DEFINE_SCAN_TAIL(scan_tail_f64, scan_image_f64, double)

/* The taps of an input row (or column) i: tap[j] = ky and out[j] = oy for the j-th output row
 * it reaches, oy * stride = i + pad - ky; returns how many. */
static inline int taps_of(int64_t i, const Geometry *g, int64_t limit, int64_t *tap,
                          int64_t *out) {
    int n = 0;
    for (int64_t t = 0; t < g->k; ++t) {
        const int64_t shifted = i + g->pad - t;
        if (shifted < 0) break;  /* larger taps shift further below 0 */
        if (g->stride == 1 ? 0 : shifted % g->stride) continue;
        const int64_t o = g->stride == 1 ? shifted : shifted / g->stride;
        if (o < limit) { tap[n] = t; out[n++] = o; }
    }
    return n;
}

/* An event's flat position in [C_in, H, W]: its code, bit-inverted for a negative spike. */
static inline int64_t event_position(int32_t code) { return code < 0 ? ~code : code; }

/* An event's input channel, returned, and the taps of its row and column (see taps_of). */
static inline int64_t event_taps(int32_t code, const Geometry *g, int64_t *tky, int64_t *toy,
                                 int *ny, int64_t *tkx, int64_t *tox, int *nx) {
    const int64_t p = event_position(code), plane = g->height * g->width;
    const int64_t ci = p / plane, rest = p - ci * plane;
    const int64_t iy = rest / g->width, ix = rest - iy * g->width;
    *ny = taps_of(iy, g, g->out_h, tky, toy);
    *nx = taps_of(ix, g, g->out_w, tkx, tox);
    return ci;
}

/* One image's events scattered into its channels-last output acc [H', W', C_out]. */
#define DEFINE_FORWARD_IMAGE(NAME, T, TARGET)                                                 \
    TARGET static void NAME(const Geometry *g, const int32_t *positions, int64_t count,       \
                            T c, const T *weight, T *acc) {                                    \
        typedef T vec __attribute__((vector_size(32)));                                        \
        enum { L = 32 / sizeof(T) };                                                           \
        const int64_t cout = g->cout, k = g->k;                                                \
        int64_t tky[MAX_K], toy[MAX_K], tkx[MAX_K], tox[MAX_K];                               \
        for (int64_t e = 0; e < count; ++e) {                                                  \
            int ny, nx;                                                                         \
            const int64_t ci = event_taps(positions[e], g, tky, toy, &ny, tkx, tox, &nx);      \
            const T v = positions[e] < 0 ? -c : c;                                              \
            const vec vv = (vec){0} + v;                                                        \
            for (int a = 0; a < ny; ++a)                                                        \
                for (int b = 0; b < nx; ++b) {                                                  \
                    const T *restrict w = weight + ((ci * k + tky[a]) * k + tkx[b]) * cout;    \
                    T *restrict o = acc + (toy[a] * g->out_w + tox[b]) * cout;                 \
                    int64_t co = 0;                                                             \
                    for (; co + L <= cout; co += L) {                                           \
                        vec ov, wv;                                                             \
                        memcpy(&ov, o + co, sizeof ov);                                         \
                        memcpy(&wv, w + co, sizeof wv);                                         \
                        ov += vv * wv;                                                          \
                        memcpy(o + co, &ov, sizeof ov);                                         \
                    }                                                                           \
                    for (; co < cout; ++co) o[co] += v * w[co];                                 \
                }                                                                               \
        }                                                                                       \
    }

/* One image's weight gradient (into dw, or not if NULL) and input gradient at its events (into
 * dx [C_in * H * W], or not if NULL), from its channels-last output gradient go [H', W', C'].
 * Both read the same gradient row per tap, in one pass; the dot product accumulates in vector
 * registers (GCC vector extensions: 32 bytes, AVX2 in the wide clone, two SSE halves else). */
#define DEFINE_BACKWARD_IMAGE(NAME, T, TARGET)                                                \
    TARGET static void NAME(const Geometry *g, const int32_t *positions, int64_t count,       \
                            T c, const T *weight, const T *go, T *dw, T *dx) {                 \
        typedef T vec __attribute__((vector_size(32)));                                        \
        enum { L = 32 / sizeof(T) };                                                           \
        const int64_t cout = g->cout, k = g->k;                                                \
        int64_t tky[MAX_K], toy[MAX_K], tkx[MAX_K], tox[MAX_K];                               \
        for (int64_t e = 0; e < count; ++e) {                                                  \
            int ny, nx;                                                                         \
            const int64_t ci = event_taps(positions[e], g, tky, toy, &ny, tkx, tox, &nx);      \
            const T v = positions[e] < 0 ? -c : c;                                              \
            const vec vv = (vec){0} + v;                                                        \
            vec sum = {0};                                                                      \
            T tail = 0;                                                                         \
            for (int a = 0; a < ny; ++a)                                                        \
                for (int b = 0; b < nx; ++b) {                                                  \
                    const int64_t tap = ((ci * k + tky[a]) * k + tkx[b]) * cout;               \
                    const T *restrict gr = go + (toy[a] * g->out_w + tox[b]) * cout;           \
                    const T *restrict w = weight + tap;                                         \
                    T *restrict d = dw ? dw + tap : NULL;                                       \
                    int64_t co = 0;                                                             \
                    for (; co + L <= cout; co += L) {                                           \
                        vec gv;                                                                 \
                        memcpy(&gv, gr + co, sizeof gv);                                        \
                        if (d) {                                                                \
                            vec dv;                                                             \
                            memcpy(&dv, d + co, sizeof dv);                                     \
                            dv += vv * gv;                                                      \
                            memcpy(d + co, &dv, sizeof dv);                                     \
                        }                                                                       \
                        if (dx) {                                                               \
                            vec wv;                                                             \
                            memcpy(&wv, w + co, sizeof wv);                                     \
                            sum += wv * gv;                                                     \
                        }                                                                       \
                    }                                                                           \
                    for (; co < cout; ++co) {                                                   \
                        if (d) d[co] += v * gr[co];                                             \
                        tail += w[co] * gr[co];                                                 \
                    }                                                                           \
                }                                                                               \
            if (dx) {                                                                           \
                T total = tail;                                                                 \
                for (int l = 0; l < L; ++l) total += sum[l];                                    \
                dx[event_position(positions[e])] = total;                              \
            }                                                                                   \
        }                                                                                       \
    }

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define WIDE __attribute__((target("avx2")))
#define HAVE_WIDE 1
#else
#define WIDE
#define HAVE_WIDE 0
#endif

static int wide(void) {
#if HAVE_WIDE
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* scan_image with AVX2. A vector compare gives the mask of the nonzero lanes of 8 floats; their
 * codes (position, bit-inverted where negative) are packed to the front of a vector by a
 * permutation looked up from the mask and stored at once, so a group of 8 costs the same
 * branch-free instructions whatever its spikes (a loop over the set bits mispredicts about once
 * per group at the densities of trained networks). Where fewer than 8 slots are left, the set
 * bits are visited one by one. float64 (the tests' precision) visits the bits of 4 lanes. */
#if HAVE_WIDE
#include <immintrin.h>

static int32_t packed_lanes[256][8]; /* for a mask of 8 lanes: its set lanes in order, then 0 */

__attribute__((constructor)) static void fill_packed_lanes(void) {
    for (int mask = 0; mask < 256; ++mask) {
        int n = 0;
        for (int lane = 0; lane < 8; ++lane)
            if (mask >> lane & 1) packed_lanes[mask][n++] = lane;
        while (n < 8) packed_lanes[mask][n++] = 0;
    }
}

/* Append the events of the `lanes` set in a group starting at entry i (`negative`: the lanes
 * holding -c), one by one, writing while there is room; returns the new count. */
static inline int64_t append_lanes(unsigned lanes, unsigned negative, int64_t i, int32_t *out,
                                   int64_t count, int64_t room) {
    for (; lanes; lanes &= lanes - 1, ++count) {
        const int lane = __builtin_ctz(lanes);
        const int32_t p = (int32_t)(i + lane);
        if (count < room) out[count] = (negative >> lane) & 1 ? ~p : p;
    }
    return count;
}

WIDE static int64_t scan_image_f32_wide(const float *x, int64_t size, int32_t *out, int64_t room,
                                        float *c, int *other) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 magnitude = _mm256_set1_ps(*c);
    unsigned mismatch = 0;
    int64_t count = 0, i = 0;
    for (; i + 8 <= size; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const unsigned nonzero = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ));
        if (*c == 0.0f) {
            if (!nonzero) continue;
            if (!isfinite(*c = fabsf(x[i + __builtin_ctz(nonzero)]))) { *other = 1; return count; }
            magnitude = _mm256_set1_ps(*c);
        }
        mismatch |= nonzero ^ (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_and_ps(v, abs_mask), magnitude, _CMP_EQ_OQ));
        if (count + 8 > room) {
            count = append_lanes(nonzero, (unsigned)_mm256_movemask_ps(v), i, out, count, room);
            continue;
        }
        const __m256i sign = _mm256_srai_epi32(_mm256_castps_si256(v), 31);
        const __m256i codes = _mm256_xor_si256(_mm256_add_epi32(_mm256_set1_epi32((int32_t)i),
                                                                lane), sign);
        const __m256i order = _mm256_loadu_si256((const __m256i *)packed_lanes[nonzero]);
        _mm256_storeu_si256((__m256i *)(out + count), _mm256_permutevar8x32_epi32(codes, order));
        count += __builtin_popcount(nonzero);
    }
    if (mismatch) { *other = 1; return count; }
    return scan_tail_f32(x, i, size, out, count, room, c, other);
}

WIDE static int64_t scan_image_f64_wide(const double *x, int64_t size, int32_t *out,
                                        int64_t room, double *c, int *other) {
    const __m256d zero = _mm256_setzero_pd();
    const __m256d abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
    int64_t count = 0, i = 0;
    for (; i + 4 <= size; i += 4) {
        const __m256d v = _mm256_loadu_pd(x + i);
        const unsigned nonzero = (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(v, zero, _CMP_NEQ_UQ));
        if (!nonzero) continue;
        if (*c == 0.0 && !isfinite(*c = fabs(x[i + __builtin_ctz(nonzero)]))) {
            *other = 1;
            return count;
        }
        const unsigned spikes = (unsigned)_mm256_movemask_pd(
            _mm256_cmp_pd(_mm256_and_pd(v, abs_mask), _mm256_set1_pd(*c), _CMP_EQ_OQ));
        if (spikes != nonzero) { *other = 1; return count; }
        count = append_lanes(nonzero, (unsigned)_mm256_movemask_pd(v), i, out, count, room);
    }
    return scan_tail_f64(x, i, size, out, count, room, c, other);
}
#else
#define scan_image_f32_wide scan_image_f32
#define scan_image_f64_wide scan_image_f64
#endif

DEFINE_FORWARD_IMAGE(forward_image_f32, float, )
DEFINE_FORWARD_IMAGE(forward_image_f64, double, )
DEFINE_BACKWARD_IMAGE(backward_image_f32, float, )
DEFINE_BACKWARD_IMAGE(backward_image_f64, double, )
DEFINE_FORWARD_IMAGE(forward_image_f32_wide, float, WIDE)
DEFINE_FORWARD_IMAGE(forward_image_f64_wide, double, WIDE)
DEFINE_BACKWARD_IMAGE(backward_image_f32_wide, float, WIDE)
DEFINE_BACKWARD_IMAGE(backward_image_f64_wide, double, WIDE)

#define DEFINE_FORWARD(NAME, T, IMAGE)                                                        \
    static int NAME(const Geometry *g, const int64_t *offsets, const int32_t *positions,       \
                    double scale, const T *weight, T *out, int threads) {                      \
        const int64_t out_plane = g->out_h * g->out_w, cout = g->cout;                        \
        const int use_wide = wide();                                                            \
        T *scratch = NULL;                                                                      \
        threads = threads > MAX_THREADS ? MAX_THREADS : threads < 1 ? 1 : threads;              \
        if (out_plane > 1 && !(scratch = malloc(sizeof(T) * out_plane * cout * threads)))      \
            return -1;                                                                          \
        _Pragma("omp parallel num_threads(threads)")                                           \
        {                                                                                       \
            const int part = omp_thread(), parts = omp_threads();                              \
            T *buffer = scratch ? scratch + part * out_plane * cout : NULL;                    \
            const int64_t begin = first_image(offsets, g->images, part, parts);                \
            const int64_t end = first_image(offsets, g->images, part + 1, parts);              \
            for (int64_t n = begin; n < end; ++n) {                                            \
                T *restrict acc = buffer ? buffer : out + n * cout;                            \
                memset(acc, 0, sizeof(T) * out_plane * cout);                                  \
                (use_wide ? IMAGE##_wide : IMAGE)(g, positions + offsets[n],                   \
                    offsets[n + 1] - offsets[n], (T)scale, weight, acc);                       \
                if (buffer) {                                                                   \
                    T *restrict image = out + n * cout * out_plane;                            \
                    for (int64_t co = 0; co < cout; ++co)                                      \
                        for (int64_t s = 0; s < out_plane; ++s)                                \
                            image[co * out_plane + s] = buffer[s * cout + co];                 \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        free(scratch);                                                                          \
        return 0;                                                                               \
    }

/* grad [images, C_out, H', W'] -> grad_weight [C_in, k, k, C_out] (summed over all images; NULL
 * to skip) and grad_input [images, C_in, H, W] (NULL to skip). */
#define DEFINE_BACKWARD(NAME, T, IMAGE)                                                       \
    static int NAME(const Geometry *g, const int64_t *offsets, const int32_t *positions,       \
                    double scale, const T *weight, const T *grad, T *grad_weight,              \
                    T *grad_input, int threads) {                                              \
        const int64_t plane = g->height * g->width, out_plane = g->out_h * g->out_w;           \
        const int64_t cout = g->cout, weights = g->cin * g->k * g->k * cout;                  \
        const int use_wide = wide();                                                            \
        T *scratch = NULL, *partials = NULL;                                                    \
        threads = threads > MAX_THREADS ? MAX_THREADS : threads < 1 ? 1 : threads;              \
        if (out_plane > 1 && !(scratch = malloc(sizeof(T) * out_plane * cout * threads)))      \
            return -1;                                                                          \
        if (grad_weight && threads > 1                                                          \
                && !(partials = malloc(sizeof(T) * weights * (threads - 1)))) {                \
            free(scratch);                                                                      \
            return -1;                                                                          \
        }                                                                                       \
        _Pragma("omp parallel num_threads(threads)")                                           \
        {                                                                                       \
            const int part = omp_thread(), parts = omp_threads();                              \
            T *buffer = scratch ? scratch + part * out_plane * cout : NULL;                    \
            /* thread 0 sums into grad_weight, the others into their own partial gradient */  \
            T *dw = !grad_weight ? NULL : part == 0 ? grad_weight                               \
                                        : partials + (part - 1) * weights;                      \
            if (dw) memset(dw, 0, sizeof(T) * weights);                                         \
            const int64_t begin = first_image(offsets, g->images, part, parts);                \
            const int64_t end = first_image(offsets, g->images, part + 1, parts);              \
            for (int64_t n = begin; n < end; ++n) {                                            \
                const T *restrict gn = grad + n * cout * out_plane;                            \
                if (buffer) {                                                                   \
                    for (int64_t s = 0; s < out_plane; ++s)                                    \
                        for (int64_t co = 0; co < cout; ++co)                                  \
                            buffer[s * cout + co] = gn[co * out_plane + s];                    \
                    gn = buffer;                                                                \
                }                                                                               \
                T *restrict dx = grad_input ? grad_input + n * g->cin * plane : NULL;         \
                if (dx) memset(dx, 0, sizeof(T) * g->cin * plane);                              \
                (use_wide ? IMAGE##_wide : IMAGE)(g, positions + offsets[n],                   \
                    offsets[n + 1] - offsets[n], (T)scale, weight, gn, dw, dx);                \
            }                                                                                   \
            _Pragma("omp barrier")                                                             \
            if (grad_weight) {                                                                  \
                /* thread `part` sums its slice of every partial gradient into thread 0's */  \
                const int64_t lo = weights * part / parts, hi = weights * (part + 1) / parts;  \
                for (int q = 1; q < parts; ++q)                                                 \
                    for (int64_t i = lo; i < hi; ++i)                                           \
                        grad_weight[i] += partials[(q - 1) * weights + i];                      \
            }                                                                                   \
        }                                                                                       \
        free(scratch);                                                                          \
        free(partials);                                                                         \
        return 0;                                                                               \
    }

#ifdef _OPENMP
#include <omp.h>
static int omp_thread(void) { return omp_get_thread_num(); }
static int omp_threads(void) { return omp_get_num_threads(); }
#else
static int omp_thread(void) { return 0; }
static int omp_threads(void) { return 1; }
#endif

/* The events of x [images, size] in one pass, at most `capacity` of them: each thread scans an
 * equal share of the images into its share of `positions`, and the shares are then moved
 * together. A thread whose images hold more events than its share keeps counting; if the total
 * still fits, a second pass writes them at their now known offsets. Returns the number of
 * events (offsets [images + 1] and positions written, *scale = c), -1 if x is not a spike train
 * of one finite magnitude, -2 if it holds more than `capacity` events. */
#define DEFINE_FIND(NAME, T, SCAN)                                                            \
    static int64_t NAME(const T *x, int64_t images, int64_t size, int64_t capacity,           \
                        int64_t *offsets, int32_t *positions, double *scale, int threads) {    \
        int64_t found[MAX_THREADS], share_start[MAX_THREADS];                                  \
        T magnitude[MAX_THREADS];                                                               \
        int other[MAX_THREADS], parts = 1, overflow = 0;                                        \
        const int use_wide = wide();                                                            \
        threads = threads > MAX_THREADS ? MAX_THREADS : threads < 1 ? 1 : threads;              \
        _Pragma("omp parallel num_threads(threads) reduction(| : overflow)")                   \
        {                                                                                       \
            const int part = omp_thread();                                                      \
            if (part == 0) parts = omp_threads();                                               \
            _Pragma("omp barrier")                                                             \
            const int64_t begin = images * part / parts, end = images * (part + 1) / parts;    \
            const int64_t start = capacity * begin / (images ? images : 1);                    \
            const int64_t room = capacity * end / (images ? images : 1) - start;               \
            int64_t count = 0;                                                                  \
            T c = 0;                                                                            \
            int bad = 0;                                                                        \
            for (int64_t n = begin; n < end && !bad; ++n) {                                     \
                const int64_t left = room > count ? room - count : 0;                          \
                const int64_t events = (use_wide ? SCAN##_wide : SCAN)(                        \
                    x + n * size, size, positions + start + (room > count ? count : room),     \
                    left, &c, &bad);                                                            \
                offsets[n + 1] = events;                                                        \
                count += events;                                                                \
            }                                                                                   \
            found[part] = count, share_start[part] = start, magnitude[part] = c;               \
            other[part] = bad;                                                                  \
            overflow |= count > room;                                                           \
        }                                                                                       \
        T c = 0;                                                                                \
        int64_t total = 0;                                                                      \
        for (int p = 0; p < parts; ++p) {                                                       \
            if (other[p] || (c != (T)0 && magnitude[p] != (T)0 && magnitude[p] != c))          \
                return -1;                                                                      \
            if (c == (T)0) c = magnitude[p];                                                    \
            total += found[p];                                                                  \
        }                                                                                       \
        if (total > capacity) return -2;                                                        \
        offsets[0] = 0;                                                                         \
        for (int64_t n = 0; n < images; ++n) offsets[n + 1] += offsets[n];                      \
        if (overflow) {                                                                         \
            _Pragma("omp parallel for num_threads(parts) schedule(static)")                    \
            for (int64_t n = 0; n < images; ++n) {                                             \
                T known = c;                                                                    \
                int bad = 0;                                                                    \
                (use_wide ? SCAN##_wide : SCAN)(x + n * size, size, positions + offsets[n],    \
                                                offsets[n + 1] - offsets[n], &known, &bad);    \
            }                                                                                   \
        } else {                                                                                \
            for (int p = 1; p < parts; ++p) /* none to move: positions may be NULL */  \
                if (found[p])                                                                   \
                    memmove(positions + offsets[images * p / parts],                           \
                            positions + share_start[p], sizeof(int32_t) * found[p]);           \
        }                                                                                       \
        *scale = c == (T)0 ? 1.0 : (double)c;                                                   \
        return total;                                                                           \
    }

DEFINE_FORWARD(forward_f32, float, forward_image_f32)
DEFINE_FORWARD(forward_f64, double, forward_image_f64)
DEFINE_BACKWARD(backward_f32, float, backward_image_f32)
DEFINE_BACKWARD(backward_f64, double, backward_image_f64)
DEFINE_FIND(find_f32, float, scan_image_f32)
DEFINE_FIND(find_f64, double, scan_image_f64)

int64_t find_events(int is_double, const void *x, int64_t images, int64_t size,
                    int64_t capacity, int64_t *offsets, int32_t *positions, double *scale,
                    int threads) {
    return is_double ? find_f64(x, images, size, capacity, offsets, positions, scale, threads)
                     : find_f32(x, images, size, capacity, offsets, positions, scale, threads);
}

static Geometry geometry(const int64_t *shape) {
    Geometry g = {shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6], shape[7],
                  shape[8], shape[9]};
    return g;
}

/* shape: images, C_in, H, W, C_out, k, stride, pad, H', W'. Returns 0, or -1 if its scratch
 * memory could not be allocated. */
int event_forward(int is_double, const int64_t *shape, const int64_t *offsets,
                  const int32_t *positions, double scale, const void *weight, void *out,
                  int threads) {
    const Geometry g = geometry(shape);
    return is_double ? forward_f64(&g, offsets, positions, scale, weight, out, threads)
                     : forward_f32(&g, offsets, positions, scale, weight, out, threads);
}

int event_backward(int is_double, const int64_t *shape, const int64_t *offsets,
                   const int32_t *positions, double scale, const void *weight, const void *grad,
                   void *grad_weight, void *grad_input, int threads) {
    const Geometry g = geometry(shape);
    return is_double ? backward_f64(&g, offsets, positions, scale, weight, grad, grad_weight,
                                    grad_input, threads)
                     : backward_f32(&g, offsets, positions, scale, weight, grad, grad_weight,
                                    grad_input, threads);
}
