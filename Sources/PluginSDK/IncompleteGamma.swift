// The regularized incomplete gamma function P(a, x), its inverse in x (also as log x, for quantiles
// below Double's range) and the derivative of that inverse in the shape a (implicit reparameterization).
#if canImport(Glibc)
import Glibc
#endif

extension Special {
    /// Above this shape the standard Gamma quantile is the Wilson-Hilferty cube
    /// a (1 - 1/(9a) + z/(3 sqrt a))^3: its relative error, measured against mpmath at
    /// u = 1e-30, falls as a^(-3/2) (1.5e-5 at a = 1e4, 1.4e-8 at 1e6, so 1.4e-11 here), while P's
    /// power series would need more than its 100,000-term budget (about 9 sqrt(a) terms).
    public static let wilsonHilfertyShape = 1e8

    /// The regularized lower and upper incomplete gamma functions (P(a, x), Q(a, x) = 1 - P) for
    /// a > 0, each computed directly where it is the small one: the power series of P for
    /// x < a + 1, the Legendre continued fraction of Q (modified Lentz) otherwise
    /// (Abramowitz & Stegun 6.5.29 and 6.5.31). NaN for a <= 0 or NaN inputs.
    public static func regularizedGamma(_ a: Double, _ x: Double) -> (p: Double, q: Double) {
        guard a > 0, a.isFinite, !x.isNaN else { return (.nan, .nan) }
        if x <= 0 { return (0, 1) }
        if x == .infinity { return (1, 0) }
        let logPrefactor = a * Glibc.log(x) - x - lgamma(a)
        if x < a + 1 {
            var term = 1 / a, sum = term, n = a
            for _ in 0..<100_000 {
                n += 1
                term *= x / n
                sum += term
                if Swift.abs(term) < Swift.abs(sum) * 1e-17 { break }
            }
            let p = Swift.min(1, sum * Glibc.exp(logPrefactor))
            return (p, 1 - p)
        }
        let tiny = 1e-300
        var b = x + 1 - a, c = 1 / tiny, d = 1 / b, h = d
        for i in 1..<100_000 {
            let an = -Double(i) * (Double(i) - a)
            b += 2
            d = an * d + b
            if Swift.abs(d) < tiny { d = tiny }
            c = b + an / c
            if Swift.abs(c) < tiny { c = tiny }
            d = 1 / d
            let delta = d * c
            h *= delta
            if Swift.abs(delta - 1) < 1e-16 { break }
        }
        let q = Swift.min(1, Glibc.exp(logPrefactor) * h)
        return (1 - q, q)
    }

    /// P(a, x), the CDF of the standard Gamma(a, 1) distribution at x.
    @inlinable public static func gammaP(_ a: Double, _ x: Double) -> Double { regularizedGamma(a, x).p }

    /// The Wilson-Hilferty approximation of the standard Gamma(a, 1) quantile at p (see `wilsonHilfertyShape`).
    static func wilsonHilferty(_ a: Double, _ p: Double) -> Double {
        let c = 1 - 1 / (9 * a) + normalQuantile(p) / (3 * Glibc.sqrt(a))
        return a * c * c * c
    }

    /// log P^-1(a, p) where P^-1(a, p) < e^-40: there P(a, x) = x^a / Gamma(a + 1) (1 + O(x)), so
    /// log x = (log p + lgamma(a + 1)) / a to within a relative e^-40. nil above that.
    static func smallGammaQuantileLog(_ a: Double, _ p: Double) -> Double? {
        let logX = (Glibc.log(p) + lgamma(a + 1)) / a
        return logX < -40 ? logX : nil
    }

    /// The inverse of P(a, .): the x >= 0 with P(a, x) = p, for a > 0 and p in [0, 1].
    /// Below e^-40 the closed form of `smallGammaQuantileLog` (0 where it underflows Double; use
    /// `logGammaPInverse` there); above `wilsonHilfertyShape`, Wilson-Hilferty. Otherwise it starts
    /// from the Wilson-Hilferty approximation (a > 1) or the small-x power law
    /// x ~ (p Gamma(a + 1))^(1/a) (a <= 1), then takes Halley steps kept inside a bracket [lo, hi]
    /// that every evaluation tightens; a step leaving the bracket is replaced by bisection
    /// (geometric when the bracket spans orders of magnitude). Relative accuracy about 1e-14.
    /// NaN for a <= 0 or p outside [0, 1].
    public static func gammaPInverse(_ a: Double, _ p: Double) -> Double {
        guard a > 0, a.isFinite, p >= 0, p <= 1 else { return .nan }
        if p == 0 { return 0 }
        if p == 1 { return .infinity }
        if a > wilsonHilfertyShape { return wilsonHilferty(a, p) }
        if let logX = smallGammaQuantileLog(a, p) { return Glibc.exp(logX) }
        let lgammaA = lgamma(a)
        var x: Double
        if a > 1 {
            x = Swift.max(1e-3 * a, wilsonHilferty(a, p))
        } else {
            let logX = (Glibc.log(p) + lgamma(a + 1)) / a
            x = logX < 0 ? Swift.max(Glibc.exp(logX), 1e-300) : 1 - Glibc.log1p(-p)
        }
        var lo = 0.0, hi = Double.infinity
        for _ in 0..<300 {
            let (pp, qq) = regularizedGamma(a, x)
            // Residual in whichever tail keeps precision.
            let err = p < 0.5 ? pp - p : (1 - p) - qq
            if err < 0 { lo = x } else if err > 0 { hi = x } else { return x }
            let logDensity = (a - 1) * Glibc.log(x) - x - lgammaA
            let density = Glibc.exp(logDensity)
            var next = x
            if density > 0 && density.isFinite {
                let u = err / density
                // Halley: f''/f' = (a - 1)/x - 1 for the Gamma density.
                let correction = Swift.max(-0.5, Swift.min(0.5, 0.5 * u * ((a - 1) / x - 1)))
                next = x - u / (1 - correction)
            } else {
                next = .nan
            }
            if !(next > lo && next < hi) {
                if hi == .infinity { next = Swift.max(2 * x, 1) }
                else if lo > 0 && hi / lo > 4 { next = Glibc.sqrt(lo * hi) }
                else if lo == 0 { next = hi / 16 }
                else { next = 0.5 * (lo + hi) }
            }
            if Swift.abs(next - x) <= 1e-15 * x || (hi.isFinite && hi - lo <= 1e-15 * hi) { return next }
            x = next
        }
        return x
    }

    /// log P^-1(a, p): finite for every p in (0, 1], also where the quantile itself underflows
    /// Double (Gamma(0.005) has half its mass below e^-139 and draws below e^-3000).
    public static func logGammaPInverse(_ a: Double, _ p: Double) -> Double {
        guard a > 0, a.isFinite, p >= 0, p <= 1 else { return .nan }
        if a <= wilsonHilfertyShape, p > 0, let logX = smallGammaQuantileLog(a, p) { return logX }
        return Glibc.log(gammaPInverse(a, p))
    }

    /// d log z/da for the standard Gamma(a, 1) quantile z = P^-1(a, u) at fixed u, by implicit
    /// differentiation (Figurnov et al. 2018): -(dP/da)(a, z) / (z p(z; a)). Takes log z so that it
    /// holds where z underflows. No finite difference anywhere:
    /// - z <= a + 1 + 3 sqrt(a): P's power series differentiated term by term,
    ///   P = z^a e^-z / Gamma(a + 1) sum_n t_n with t_n = prod_{k<=n} z/(a + k), so
    ///   dP/da = z^a e^-z / Gamma(a + 1) sum_n t_n (log z - digamma(a + 1) - h_n), h_n = sum_{k<=n} 1/(a + k),
    ///   and the prefactor over z p(z) is 1/a: d log z/da = -(1/a) sum_n t_n (log z - digamma(a + 1) - h_n);
    /// - above: the Legendre continued fraction F of Q = z^a e^-z F / Gamma(a) and its derivative
    ///   F' = dF/da carried through the same recurrence (Moore 1982, AS 187), so
    ///   dQ/da = Q (log z - digamma(a)) + z^a e^-z F' / Gamma(a) and d log z/da = F (log z - digamma(a)) + F';
    /// - above `wilsonHilfertyShape`: the derivative of the Wilson-Hilferty quantile that `gammaPInverse` returns there.
    /// Relative accuracy about 1e-12 (checked against quadrature in SpecialFunctionsTests up to a = 1e6).
    public static func gammaQuantileLogDerivativeA(_ a: Double, logZ: Double) -> Double {
        guard a > 0, a.isFinite, !logZ.isNaN else { return .nan }
        if logZ == .infinity { return 0 }
        if logZ == -.infinity { return .infinity }
        let z = Glibc.exp(logZ)
        if a > wilsonHilfertyShape {
            // z = a c^3 with c = 1 - 1/(9a) + xi/(3 sqrt a): d log z/da = 1/a + 3 (dc/da)/c at fixed xi.
            let c = Glibc.exp((logZ - Glibc.log(a)) / 3), rootA = Glibc.sqrt(a)
            let xi = 3 * rootA * (c - 1 + 1 / (9 * a))
            return 1 / a + 3 * (1 / (9 * a * a) - xi / (6 * a * rootA)) / c
        }
        if z <= a + 1 + 3 * Glibc.sqrt(a) {
            let base = logZ - digamma(a + 1)
            var t = 1.0, h = 0.0, sum = base, k = a
            for _ in 0..<1_000_000 {
                k += 1
                t *= z / k
                h += 1 / k
                let term = t * (base - h)
                sum += term
                if Swift.abs(term) <= 1e-17 * Swift.abs(sum) && z < k { break }
            }
            return -sum / a
        }
        // Convergents A_n / B_n of F = 1/(b_1 + a_2/(b_2 + a_3/(b_3 + ...))) with b_n = z + 2n - 1 - a,
        // a_{n+1} = -n (n - a); dA, dB their derivatives in a (db_n/da = -1, da_{n+1}/da = n).
        var aPrev = 1.0, a0 = 0.0, bPrev = 0.0, b0 = 1.0
        var daPrev = 0.0, da0 = 0.0, dbPrev = 0.0, db0 = 0.0
        let base = logZ - digamma(a)
        var f = 0.0, result = 0.0
        for n in 1..<100_000 {
            let nn = Double(n)
            let bn = z + 2 * nn - 1 - a
            let an = n == 1 ? 1.0 : -(nn - 1) * (nn - 1 - a)
            let dan = n == 1 ? 0.0 : nn - 1
            let a1 = bn * a0 + an * aPrev, b1 = bn * b0 + an * bPrev
            let da1 = bn * da0 - a0 + an * daPrev + dan * aPrev
            let db1 = bn * db0 - b0 + an * dbPrev + dan * bPrev
            // Rescale all eight by 1/B_n (the recurrences are linear; F and F' are ratios).
            let s = 1 / b1
            aPrev = a0 * s; bPrev = b0 * s; daPrev = da0 * s; dbPrev = db0 * s
            a0 = a1 * s; b0 = 1; da0 = da1 * s; db0 = db1 * s
            let fNext = a0, next = fNext * base + (da0 - a0 * db0)
            let done = n > 2 && Swift.abs(fNext - f) <= 1e-16 * Swift.abs(fNext) && Swift.abs(next - result) <= 1e-15 * Swift.abs(next)
            f = fNext; result = next
            if done { break }
        }
        return result
    }

    /// dP(a, x)/da (analytic; see `gammaQuantileLogDerivativeA`): -x p(x; a) d log z/da at z = x.
    public static func gammaPDerivativeA(_ a: Double, _ x: Double) -> Double {
        if x <= 0 || x == .infinity { return 0 }
        let density = Glibc.exp(logGammaDensity(a, x))
        return -x * density * gammaQuantileLogDerivativeA(a, logZ: Glibc.log(x))
    }

    /// dz/da for a standard Gamma(a, 1) sample z by implicit reparameterization (Figurnov et al. 2018):
    /// -(dP/da)(a, z) / p(z; a) = z d log z/da. 0 at z = 0 (its limit); NaN for z < 0 or NaN.
    public static func gammaSampleDerivativeA(_ a: Double, _ z: Double) -> Double {
        if z == 0 { return 0 }
        return z * gammaQuantileLogDerivativeA(a, logZ: Glibc.log(z))
    }
}
