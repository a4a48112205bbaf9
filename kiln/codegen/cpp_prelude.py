"""The C++ every generated source starts with: includes, the vectorized math functions of
glibc's libmvec, dtype conversions and the pointwise helpers whose semantics eager defines
(NaN-propagating max/min, Python-style remainder, floor division).

No ATen header is included: a generated source compiles in a fraction of a second.
"""

from __future__ import annotations

import functools

from kiln.codegen.cpp_compiler import libmvec_available

# libm functions gcc may call in vector form (libmvec, glibc >= 2.35) inside `omp simd` loops:
# declared with the simd attribute, gcc calls e.g. _ZGVeN16v_expf for 16 floats at a time.
SIMD_FUNCTIONS = ("exp", "log", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
                  "tanh", "erf", "erfc", "expm1", "log1p", "log2", "log10", "exp2", "atan2",
                  "pow")
_BINARY = {"atan2", "pow"}


# exp of a float (kiln_expf). With AVX-512, 16 lanes (or 8 with AVX-512VL, where gcc prefers
# 256-bit vectors, as on Intel's server chips) at a time by kiln's own vector function:
# x clamped to [-104, 89] (NaN kept: min/max return their second operand for a NaN), n =
# rint(x log2 e), r = x - n ln 2 in two Cody-Waite steps, e^r by Cephes' expf polynomial, and
# 2^n applied by vscalefps, which rounds once and gives denormals, 0 and inf where they belong
# (exp(-inf) = 0, exp(inf) = inf, NaN -> NaN). Within 1 ulp of the exact exp over every 97th
# float (tests/codegen check a sparser sweep); softmax's loop, which exp bounds, runs ~20%
# faster than with libmvec's. gcc calls the vector variants by their vector-ABI names; the
# scalar kiln_expf (loop tails) is a jump to expf, written in assembly so that gcc makes no
# simd clones of it; the AVX and SSE variants are libmvec's. Written with gcc's builtins:
# immintrin.h would add 0.3 s to every compile.
FAST_EXP = r"""
#if defined(__AVX512F__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
typedef float kiln_v16sf __attribute__((vector_size(64)));
typedef float kiln_v8sf __attribute__((vector_size(32)));
typedef float kiln_v4sf __attribute__((vector_size(16)));
struct kiln_zmm {  // 16 lanes (AVX-512F)
    typedef kiln_v16sf V;
    static V min(V a, V b) { return __builtin_ia32_minps512_mask(a, b, V{}, (short)-1, 4); }
    static V max(V a, V b) { return __builtin_ia32_maxps512_mask(a, b, V{}, (short)-1, 4); }
    static V rint(V a) { return __builtin_ia32_rndscaleps_mask(a, 8, V{}, (short)-1, 4); }
    static V fma(V a, V b, V c) { return __builtin_ia32_vfmaddps512_mask(a, b, c, (short)-1, 4); }
    static V scalef(V a, V b) {
        return __builtin_ia32_scalefps512_mask(a, b, V{}, (short)-1, 4);
    }
};
#if defined(__AVX512VL__)
struct kiln_ymm {  // 8 lanes (AVX-512VL: gcc's choice where it prefers 256-bit vectors)
    typedef kiln_v8sf V;
    static V min(V a, V b) { return __builtin_ia32_minps256(a, b); }
    static V max(V a, V b) { return __builtin_ia32_maxps256(a, b); }
    static V rint(V a) { return __builtin_ia32_rndscaleps_256_mask(a, 8, V{}, (unsigned char)-1); }
    static V fma(V a, V b, V c) { return __builtin_ia32_vfmaddps256(a, b, c); }
    static V scalef(V a, V b) {
        return __builtin_ia32_scalefps256_mask(a, b, V{}, (unsigned char)-1);
    }
};
#endif
template <class O> static inline typename O::V kiln_exp_lanes(typename O::V x) {
    typedef typename O::V V;
    const V c = O::min(V{} + 89.0f, O::max(V{} - 104.0f, x));
    const V n = O::rint(c * 1.44269504088896341f);
    V r = O::fma(n, V{} - 0.693359375f, c);
    r = O::fma(n, V{} + 2.12194440e-4f, r);
    V p = V{} + 1.9875691500e-4f;
    p = O::fma(p, r, V{} + 1.3981999507e-3f);
    p = O::fma(p, r, V{} + 8.3334519073e-3f);
    p = O::fma(p, r, V{} + 4.1665795894e-2f);
    p = O::fma(p, r, V{} + 1.6666665459e-1f);
    p = O::fma(p, r, V{} + 5.0000001201e-1f);
    return O::scalef(O::fma(p, r * r, r) + 1.0f, n);
}
extern "C" {
__attribute__((simd("notinbranch"), visibility("hidden"), const, nothrow)) float
kiln_expf(float) noexcept;  // const: gcc if-converts loops calling it (as it does for expf)
kiln_v8sf _ZGVdN8v_expf(kiln_v8sf); kiln_v8sf _ZGVcN8v_expf(kiln_v8sf);
kiln_v4sf _ZGVbN4v_expf(kiln_v4sf);
__attribute__((visibility("hidden"))) kiln_v16sf _ZGVeN16v_kiln_expf(kiln_v16sf x) {
    return kiln_exp_lanes<kiln_zmm>(x);
}
__attribute__((visibility("hidden"))) kiln_v8sf _ZGVdN8v_kiln_expf(kiln_v8sf x) {
#if defined(__AVX512VL__)
    return kiln_exp_lanes<kiln_ymm>(x);
#else
    return _ZGVdN8v_expf(x);
#endif
}
__attribute__((visibility("hidden"))) kiln_v8sf _ZGVcN8v_kiln_expf(kiln_v8sf x) {
    return _ZGVcN8v_expf(x);
}
__attribute__((visibility("hidden"))) kiln_v4sf _ZGVbN4v_kiln_expf(kiln_v4sf x) {
    return _ZGVbN4v_expf(x);
}
}
__asm__(".text\n.globl kiln_expf\n.hidden kiln_expf\n.type kiln_expf, @function\n"
        "kiln_expf:\n\tjmp expf@PLT\n.size kiln_expf, .-kiln_expf\n");
#else
#define kiln_expf expf
#endif
"""


def _declarations() -> str:
    if not libmvec_available():
        return "\n#define kiln_expf expf\n"
    lines = ['extern "C" {']
    for f in SIMD_FUNCTIONS:
        for t, suffix in (("float", "f"), ("double", "")):
            params = f"{t}, {t}" if f in _BINARY else t
            lines.append(f'__attribute__((simd("notinbranch"))) {t} {f}{suffix}({params}) '
                         "noexcept;")
    lines.append("}")
    return "\n".join(lines) + FAST_EXP


INCLUDES = """#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <limits>
#include <type_traits>
"""

PRELUDE_BODY = r"""
typedef uint16_t kiln_bf16;

static inline float kiln_bf16_to_float(kiln_bf16 b) {
    uint32_t u = ((uint32_t)b) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
static inline kiln_bf16 kiln_float_to_bf16(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    if (f != f) return (kiln_bf16)0x7fc0;
    u += 0x7fff + ((u >> 16) & 1);  // round to nearest even, as c10::BFloat16
    return (kiln_bf16)(u >> 16);
}
template <typename T> static inline T kiln_maximum(T a, T b) {
    return (a != a) ? a : ((b > a || b != b) ? b : a);
}
template <typename T> static inline T kiln_minimum(T a, T b) {
    return (a != a) ? a : ((b < a || b != b) ? b : a);
}
template <typename T> static inline T kiln_remainder(T a, T b) {
    T r;
    if constexpr (std::is_integral_v<T>) r = a % b; else r = std::fmod(a, b);
    return (r != 0 && ((r < 0) != (b < 0))) ? (T)(r + b) : r;
}
template <typename T> static inline T kiln_floordiv(T a, T b) {
    if constexpr (std::is_integral_v<T>) {  // c10::div_floor_integer (b is not 0 or -1)
        T q = a / b, r = a % b;
        return (r != 0 && ((r < 0) != (b < 0))) ? (T)(q - 1) : q;
    } else {  // c10::div_floor_floating
        if (b == 0) return a / b;
        T mod = std::fmod(a, b);
        T div = (a - mod) / b;
        if ((mod != 0) && (b < 0) != (mod < 0)) div -= T(1);
        if (div != 0) {
            T f = std::floor(div);
            if (div - f > T(0.5)) f += T(1);
            return f;
        }
        return std::copysign(T(0), a / b);
    }
}
template <typename T> static inline T kiln_powi(T a, T b) {
    // c10::powi: integer powers by squaring, wrapping on overflow (on the unsigned type,
    // whose overflow is defined); negative exponents give 0 except for bases 1 and -1
    if (b < 0) {
        if (a == 1) return 1;
        if (a == -1) return (b % 2) ? (T)-1 : (T)1;
        return 0;
    }
    using U = std::conditional_t<(sizeof(T) < sizeof(unsigned)), unsigned,
                                 std::make_unsigned_t<T>>;  // no promotion to signed int
    U result = 1, base = (U)a;
    while (b) {
        if (b & 1) result *= base;
        b /= 2;
        base *= base;
    }
    return (T)result;
}
// erf of a float: x * P(x^2) / Q(x^2) on |x| <= 3.92 (beyond it erf rounds to +-1 in float),
// both polynomials of degree 5, fitted to erf(x)/x in relative error (iteratively reweighted
// least squares toward minimax). At most 6.3 ulp from the exact erf (tests/codegen check it);
// no libm call, so the loop stays vectorized: twice libmvec's erff speed, the cost that bound
// GELU. A NaN fails the comparisons and propagates; erf(-0) is -0, erf(+-inf) +-1.
static inline float kiln_erff(float x) {
    const float c = x < -3.92f ? -3.92f : (x > 3.92f ? 3.92f : x);
    const float s = c * c;
    const float p = ((((2.065942680928856e-06f * s + 0.0002841379609890282f) * s
                       + 0.003711693687364459f) * s + 0.052581608295440674f) * s
                     + 0.1890861690044403f) * s + 1.1283791065216064f;
    const float q = ((((3.8218004192458466e-05f * s + 0.001150384428910911f) * s
                       + 0.01486001443117857f) * s + 0.11357036978006363f) * s
                     + 0.5009061694145203f) * s + 1.0f;
    return x > 3.92f ? 1.0f : (x < -3.92f ? -1.0f : c * p / q);
}
template <typename T> static inline T kiln_sign(T a) {
    return (T)((T(0) < a) - (a < T(0)));
}
"""


@functools.cache
def prelude() -> str:
    return INCLUDES + _declarations() + "\n" + PRELUDE_BODY
