// Philox4x32-10 (Salmon et al., SC'11): the counter-based generator behind every random stream.

/// A stateless block function: (key, counter) -> four 32-bit words. Any block can be computed
/// independently, so streams can be split across threads and replayed bit-exactly.
public enum Philox {
    @inline(__always)
    static func mulhilo(_ a: UInt32, _ b: UInt32) -> (hi: UInt32, lo: UInt32) {
        let p = UInt64(a) &* UInt64(b)
        return (UInt32(truncatingIfNeeded: p >> 32), UInt32(truncatingIfNeeded: p))
    }

    /// Ten rounds of Philox4x32 on `counter` under `key`.
    @inline(__always)
    public static func block(key: (UInt32, UInt32), counter: (UInt32, UInt32, UInt32, UInt32)) -> (UInt32, UInt32, UInt32, UInt32) {
        var (c0, c1, c2, c3) = counter
        var (k0, k1) = key
        for _ in 0..<10 {
            let (hi0, lo0) = mulhilo(0xD251_1F53, c0)
            let (hi1, lo1) = mulhilo(0xCD9E_8D57, c2)
            (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
            k0 &+= 0x9E37_79B9
            k1 &+= 0xBB67_AE85
        }
        return (c0, c1, c2, c3)
    }
}

/// SplitMix64's finaliser: mixes identifiers into well-spread keys.
@inline(__always)
public func splitMix64(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}
