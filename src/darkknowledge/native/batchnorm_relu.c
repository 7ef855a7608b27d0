/* Training-mode BatchNorm, an optional residual addition and ReLU in one pass over
 * channels-last activations viewed as rows [M, C] (M = N * H * W), float32 or bfloat16.
 * Forward: y = relu(x * scale + shift [+ r]), two passes (moments, output).
 * Backward: two passes (gradient moments, input gradient); the ReLU mask comes from y
 * where a residual was added, else from x again with the forward's own arithmetic.
 * Statistics accumulate in float over blocks of rows, then in double.
 * Threads: OpenMP, which resolves to the libgomp torch has already loaded. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define INLINE static inline __attribute__((always_inline))
#define BLOCK 256

INLINE float load(const void* p, int64_t i, const int bf16) {
  if (!bf16) return ((const float*)p)[i];
  uint32_t bits = (uint32_t)((const uint16_t*)p)[i] << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

INLINE void store(void* p, int64_t i, float v, const int bf16) {
  if (!bf16) {
    ((float*)p)[i] = v;
    return;
  }
  uint32_t bits;
  memcpy(&bits, &v, 4);
  uint16_t rounded = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16); /* nearest even */
  ((uint16_t*)p)[i] = v != v ? (uint16_t)0x7FC0 : rounded;
}

INLINE float relu(float v) { return v < 0.f ? 0.f : v; } /* NaN stays NaN */

static void rows_of(int64_t M, int t, int n, int64_t* lo, int64_t* hi) {
  int64_t per = (M + n - 1) / n;
  *lo = t * per < M ? t * per : M;
  *hi = *lo + per < M ? *lo + per : M;
}

/* The row loops below walk "groups" of R consecutive rows, L = R * C contiguous values, with each
 * per-channel coefficient repeated R times (tiled to length L): with few channels a single row
 * is too short a loop to vectorise well. A thread's last rows (fewer than R) run one row at a
 * time on the first C entries of the same arrays. Reductions fold the L partial sums into C. */
static int64_t group_rows(int64_t C) { return C >= 128 ? 1 : (128 + C - 1) / C; }

/* acc[c] and acc[C + c] += the two block sums of every position j of channel c = j % C. */
INLINE void fold(const float* blk, double* acc, int64_t C, int64_t L) {
  for (int64_t j = 0; j < L; ++j) {
    acc[j % C] += blk[j];
    acc[C + j % C] += blk[L + j];
  }
}

/* Sums over rows [lo, hi): acc[c] += sum (x - pivot), acc[C + c] += sum (x - pivot)^2. */
INLINE void moments_rows(const void* x, int64_t lo, int64_t hi, int64_t C, const float* pivot, float* blk,
                         double* acc, const int bf16) {
  const int64_t R = group_rows(C), L = R * C, groups_per_block = BLOCK / R > 0 ? BLOCK / R : 1;
  int64_t m = lo;
  while (m < hi) {
    memset(blk, 0, sizeof(float) * 2 * L);
    for (int64_t k = 0; k < groups_per_block && m < hi; ++k) {
      int64_t n = m + R <= hi ? L : C, base = m * C;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        float v = load(x, base + j, bf16) - pivot[j];
        blk[j] += v;
        blk[L + j] += v * v;
      }
      m += n / C;
    }
    fold(blk, acc, C, L);
  }
}

/* y = relu(x * scale + shift [+ r]) over rows [lo, hi). */
INLINE void apply_rows(const void* x, const void* r, void* y, int64_t lo, int64_t hi, int64_t C, const float* scale,
                       const float* shift, const int bf16) {
  const int64_t R = group_rows(C), L = R * C;
  for (int64_t m = lo; m < hi;) {
    int64_t n = m + R <= hi ? L : C, base = m * C;
    if (r) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j)
        store(y, base + j, relu(fmaf(load(x, base + j, bf16), scale[j], shift[j]) + load(r, base + j, bf16)), bf16);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j)
        store(y, base + j, relu(fmaf(load(x, base + j, bf16), scale[j], shift[j])), bf16);
    }
    m += n / C;
  }
}

/* g = dy where the output was positive (from y when given, else from x); acc[c] += sum g,
 * acc[C + c] += sum g * (x - mean); g is written when y is given (the residual's gradient). */
INLINE void grad_moments_rows(const void* dy, const void* x, const void* y, void* g, int64_t lo, int64_t hi, int64_t C,
                              const float* mean, const float* scale, const float* shift, float* blk, double* acc,
                              const int bf16) {
  const int64_t R = group_rows(C), L = R * C, groups_per_block = BLOCK / R > 0 ? BLOCK / R : 1;
  int64_t m = lo;
  while (m < hi) {
    memset(blk, 0, sizeof(float) * 2 * L);
    for (int64_t k = 0; k < groups_per_block && m < hi; ++k) {
      int64_t n = m + R <= hi ? L : C, base = m * C;
      if (y) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          float gv = load(y, base + j, bf16) > 0.f ? load(dy, base + j, bf16) : 0.f;
          store(g, base + j, gv, bf16);
          blk[j] += gv;
          blk[L + j] += gv * (load(x, base + j, bf16) - mean[j]);
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          float xv = load(x, base + j, bf16);
          float gv = fmaf(xv, scale[j], shift[j]) > 0.f ? load(dy, base + j, bf16) : 0.f;
          blk[j] += gv;
          blk[L + j] += gv * (xv - mean[j]);
        }
      }
      m += n / C;
    }
    fold(blk, acc, C, L);
  }
}

/* dx = kg * g + kx * x + k0 over rows [lo, hi), g read back (residual) or masked from dy again. */
INLINE void grad_input_rows(const void* dy, const void* x, const void* g, void* dx, int64_t lo, int64_t hi, int64_t C,
                            const float* scale, const float* shift, const float* kg, const float* kx, const float* k0,
                            const int bf16) {
  const int64_t R = group_rows(C), L = R * C;
  for (int64_t m = lo; m < hi;) {
    int64_t n = m + R <= hi ? L : C, base = m * C;
    if (g) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j)
        store(dx, base + j, kg[j] * load(g, base + j, bf16) + kx[j] * load(x, base + j, bf16) + k0[j], bf16);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        float xv = load(x, base + j, bf16);
        float gv = fmaf(xv, scale[j], shift[j]) > 0.f ? load(dy, base + j, bf16) : 0.f;
        store(dx, base + j, kg[j] * gv + kx[j] * xv + k0[j], bf16);
      }
    }
    m += n / C;
  }
}

/* Repeat the first C entries of each of the `count` arrays starting at a (stride L) across all L. */
static void tile(float* a, int count, int64_t C, int64_t L) {
  for (int k = 0; k < count; ++k)
    for (int64_t j = C; j < L; ++j) a[k * L + j] = a[k * L + j % C];
}

/* Floats per thread for its block accumulators (2 L), a whole number of 64-byte cache lines so
 * that two threads never write the same line. */
static size_t padded(int64_t L) { return (size_t)((2 * L + 15) / 16 * 16); }

static float* alloc_floats(size_t n) { return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64); }

/* Sum each thread's accumulators (2 C each) into out[2 * C]. */
static void reduce(const double* part, int threads, int64_t C, double* out) {
  for (int64_t c = 0; c < 2 * C; ++c) {
    out[c] = 0;
    for (int t = 0; t < threads; ++t) out[c] += part[(size_t)t * 2 * C + c];
  }
}

/* The forward's per-channel affine map; the backward recomputes it bit for bit to find the ReLU mask. */
static void scale_shift(int64_t C, const float* weight, const float* bias, const float* mean, const float* invstd,
                        float* scale, float* shift) {
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = weight[c] * invstd[c];
    shift[c] = bias[c] - mean[c] * scale[c];
  }
}

/* Work buffers of one call: per thread 2 C double sums, then 2 C for their total; per thread a
 * padded block of float accumulators, then `arrays` float arrays of length L. 0, or -1 (nothing held). */
static int work_buffers(int threads, int64_t C, int64_t L, int arrays, double** part, float** work) {
  *part = calloc((size_t)threads * 2 * C + 2 * C, sizeof(double));
  *work = alloc_floats((size_t)threads * padded(L) + (size_t)arrays * L);
  if (*part && *work) return 0;
  free(*part);
  free(*work);
  return -1;
}

/* Entry points; each returns 0, or -1 when its work buffers could not be allocated.
 * forward: y = relu(bn(x) [+ r]); mean, var (biased) and invstd of the batch are written, and the
 * running statistics updated as torch does (unbiased variance) unless running_mean is NULL.
 * backward: dx, and g = the residual's gradient when y is given (y: the forward's output, NULL
 * without a residual); dweight, dbias. */
#define DEFINE_ENTRY_POINTS(SUFFIX, BF16)                                                                             \
  int dk_bn_relu_forward_##SUFFIX(const void* x, const void* r, void* y, int64_t M, int64_t C, const float* weight,   \
                                  const float* bias, double eps, float* mean, float* var, float* invstd,              \
                                  float* running_mean, float* running_var, double momentum, int threads) {            \
    const int64_t L = group_rows(C) * C;                                                                              \
    double* part;                                                                                                     \
    float* work;                                                                                                      \
    if (work_buffers(threads, C, L, 3, &part, &work) != 0) return -1;                                             \
    double* total = part + (size_t)threads * 2 * C;                                                                   \
    float *pivot = work + (size_t)threads * padded(L), *scale = pivot + L, *shift = scale + L;                        \
    for (int64_t c = 0; c < C; ++c) pivot[c] = load(x, c, BF16);                                                     \
    tile(pivot, 1, C, L);                                                                                             \
    _Pragma("omp parallel num_threads(threads)") {                                                                    \
      int t = omp_get_thread_num();                                                                                   \
      int64_t lo, hi;                                                                                                 \
      rows_of(M, t, omp_get_num_threads(), &lo, &hi);                                                                 \
      moments_rows(x, lo, hi, C, pivot, work + (size_t)t * padded(L), part + (size_t)t * 2 * C, BF16);               \
    }                                                                                                                 \
    reduce(part, threads, C, total);                                                                                  \
    for (int64_t c = 0; c < C; ++c) {                                                                                 \
      double mu = total[c] / M, v = total[C + c] / M - mu * mu;                                                       \
      v = v > 0 ? v : 0;                                                                                              \
      mean[c] = (float)(mu + pivot[c]);                                                                               \
      var[c] = (float)v;                                                                                              \
      invstd[c] = (float)(1.0 / sqrt(v + eps));                                                                       \
      if (running_mean) {                                                                                             \
        running_mean[c] = (float)((1 - momentum) * running_mean[c] + momentum * mean[c]);                            \
        running_var[c] = (float)((1 - momentum) * running_var[c] + momentum * v * M / (M - 1));                      \
      }                                                                                                               \
    }                                                                                                                 \
    scale_shift(C, weight, bias, mean, invstd, scale, shift);                                                         \
    tile(scale, 2, C, L);                                                                                             \
    _Pragma("omp parallel num_threads(threads)") {                                                                    \
      int64_t lo, hi;                                                                                                 \
      rows_of(M, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);                                              \
      apply_rows(x, r, y, lo, hi, C, scale, shift, BF16);                                                             \
    }                                                                                                                 \
    free(part);                                                                                                       \
    free(work);                                                                                                       \
    return 0;                                                                                                         \
  }                                                                                                                   \
                                                                                                                      \
  int dk_bn_relu_backward_##SUFFIX(const void* dy, const void* x, const void* y, void* g, void* dx, int64_t M,        \
                                   int64_t C, const float* weight, const float* bias, const float* mean,              \
                                   const float* invstd, float* dweight, float* dbias, int threads) {                  \
    const int64_t L = group_rows(C) * C;                                                                              \
    double* part;                                                                                                     \
    float* work;                                                                                                      \
    if (work_buffers(threads, C, L, 6, &part, &work) != 0) return -1;                                             \
    double* total = part + (size_t)threads * 2 * C;                                                                   \
    float *scale = work + (size_t)threads * padded(L), *shift = scale + L, *mean_t = shift + L;                       \
    float *kg = mean_t + L, *kx = kg + L, *k0 = kx + L;                                                               \
    scale_shift(C, weight, bias, mean, invstd, scale, shift);                                                         \
    memcpy(mean_t, mean, sizeof(float) * C);                                                                          \
    tile(scale, 3, C, L);                                                                                             \
    _Pragma("omp parallel num_threads(threads)") {                                                                    \
      int t = omp_get_thread_num();                                                                                   \
      int64_t lo, hi;                                                                                                 \
      rows_of(M, t, omp_get_num_threads(), &lo, &hi);                                                                 \
      grad_moments_rows(dy, x, y, g, lo, hi, C, mean_t, scale, shift, work + (size_t)t * padded(L),                   \
                        part + (size_t)t * 2 * C, BF16);                                                              \
    }                                                                                                                 \
    reduce(part, threads, C, total);                                                                                  \
    for (int64_t c = 0; c < C; ++c) {                                                                                 \
      double s = total[c], d = total[C + c], a = (double)weight[c] * invstd[c];                                       \
      double b = -a * (double)invstd[c] * invstd[c] * d / M;                                                          \
      dbias[c] = (float)s;                                                                                            \
      dweight[c] = (float)(d * invstd[c]);                                                                            \
      kg[c] = (float)a;                                                                                               \
      kx[c] = (float)b;                                                                                               \
      k0[c] = (float)(-a * s / M - b * mean[c]);                                                                      \
    }                                                                                                                 \
    tile(kg, 3, C, L);                                                                                                \
    _Pragma("omp parallel num_threads(threads)") {                                                                    \
      int64_t lo, hi;                                                                                                 \
      rows_of(M, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);                                              \
      grad_input_rows(dy, x, y ? g : NULL, dx, lo, hi, C, scale, shift, kg, kx, k0, BF16);                           \
    }                                                                                                                 \
    free(part);                                                                                                       \
    free(work);                                                                                                       \
    return 0;                                                                                                         \
  }

DEFINE_ENTRY_POINTS(f32, 0)
DEFINE_ENTRY_POINTS(bf16, 1)
