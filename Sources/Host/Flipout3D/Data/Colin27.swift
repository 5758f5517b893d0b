// Colin27: the real-MRI task, brain extraction on Debian mricron-data's Colin27 T1 at 2 mm, trained on one hemisphere and tested on the other.
//
// Inputs: ch2.nii.gz (T1 head) and ch2bet.nii.gz (extracted brain; mask = ch2bet > 0), both
// 181×217×181 uint8 at 1 mm. Resampling to 2 mm crops each axis to an even size (dropping the last
// slice; voxel (0,0,0) is kept so the grid's origin moves by half a voxel, see
// NIfTIHeader.downsampled), then averages 2×2×2 blocks of the image and takes the majority (>= 4
// of 8) of the mask. Intensities are z-scored with the mean and standard deviation over the head
// (2 mm voxels where at least 4 of 8 ch2 voxels are nonzero). The hemispheres are the two halves
// along W (the NIfTI i axis, x in world space): with a positive srow_x[0] (RAS, as Colin27 is),
// low i is the subject's left.

public enum Colin27Error: Error, CustomStringConvertible {
    case notInstalled(path: String)
    case unreadable(path: String, underlying: Error)
    case mismatchedGrids(String)

    public var description: String {
        switch self {
        case .notInstalled(let path):
            return "\(path): Colin27 MRI not found; install it with apt-get install mricron-data or run scripts/demo --real"
        case let .unreadable(path, error):
            return "\(path): cannot read the Colin27 volume: \(error); reinstall it with apt-get install --reinstall mricron-data"
        case .mismatchedGrids(let what):
            return "Colin27: ch2 and ch2bet differ in grid (\(what)); reinstall mricron-data"
        }
    }
}

public struct Colin27 {
    public static let defaultDirectory = "/usr/share/mricron/templates"

    public enum Hemisphere: Int, Sendable, CaseIterable { case left = 0, right = 1 }

    /// T1 at 2 mm, z-scored over the head. (D, H, W) = (nz, ny, nx) = (90, 108, 90).
    public let image: Tensor
    /// Brain mask at 2 mm, 0 or 1. (D, H, W)
    public let brain: Tensor
    /// Head mask at 2 mm, 0 or 1 (the voxels the z-score used). (D, H, W)
    public let head: Tensor
    /// The 2 mm grid's header (sform from ch2, qform set to agree), for writing predictions.
    public let header: NIfTIHeader
    /// Mean and standard deviation of the 2 mm head voxels before normalisation (raw ch2 units).
    public let headMean: Float, headStd: Float

    public var shape: [Int] { image.shape }

    /// Loads and resamples ch2.nii.gz and ch2bet.nii.gz from `directory`.
    public init(directory: String = Colin27.defaultDirectory) throws {
        let headPath = directory + "/ch2.nii.gz", brainPath = directory + "/ch2bet.nii.gz"
        func load(_ path: String) throws -> NIfTIVolume {
            guard FileIO.exists(path) else { throw Colin27Error.notInstalled(path: path) }
            do { return try NIfTI.read(path) } catch { throw Colin27Error.unreadable(path: path, underlying: error) }
        }
        let t1 = try load(headPath), bet = try load(brainPath)
        guard t1.data.shape == bet.data.shape else {
            throw Colin27Error.mismatchedGrids("\(t1.data.shape) vs \(bet.data.shape)")
        }
        let full = t1.data.shape // (D, H, W) at 1 mm
        let cropped = full.map { $0 - $0 % 2 }
        let (d, h, w) = (cropped[0] / 2, cropped[1] / 2, cropped[2] / 2)
        header = t1.header.downsampled(by: 2, croppedShape: cropped)
        image = Tensor(shape: [d, h, w])
        brain = Tensor(shape: [d, h, w])
        head = Tensor(shape: [d, h, w])
        let (fh, fw) = (full[1], full[2])
        let src = t1.data.data, bsrc = bet.data.data
        var sum = 0.0, sum2 = 0.0, nHead = 0.0
        var o = 0
        for z in 0..<d { for y in 0..<h { for x in 0..<w {
            var s: Float = 0
            var brainCount = 0, headCount = 0
            for dz in 0..<2 { for dy in 0..<2 { for dx in 0..<2 {
                let i = ((2 * z + dz) * fh + 2 * y + dy) * fw + 2 * x + dx
                s += src[i]
                if src[i] > 0 { headCount += 1 }
                if bsrc[i] > 0 { brainCount += 1 }
            } } }
            image.data[o] = s / 8
            brain.data[o] = brainCount >= 4 ? 1 : 0
            head.data[o] = headCount >= 4 ? 1 : 0
            if headCount >= 4 { sum += Double(s / 8); sum2 += Double(s / 8) * Double(s / 8); nHead += 1 }
            o += 1
        } } }
        let mean = sum / max(nHead, 1)
        let sd = max((sum2 / max(nHead, 1) - mean * mean).squareRoot(), 1e-6)
        headMean = Float(mean); headStd = Float(sd)
        for i in 0..<image.count { image.data[i] = (image.data[i] - headMean) / headStd }
    }

    /// The full 2 mm volume (1, 1, D, H, W) and its header, for whole-head prediction output.
    public var fullVolume: (image: Tensor, label: Tensor, header: NIfTIHeader) {
        (image.reshaped([1, 1] + shape), brain.reshaped([1, 1] + shape), header)
    }

    /// The W (NIfTI i) columns of a hemisphere: left is low i when srow_x[0] > 0, else high i.
    public func columns(_ side: Hemisphere) -> Range<Int> {
        let w = shape[2], mid = w / 2
        let lowIsLeft = header.srowX[0] >= 0
        return (side == .left) == lowIsLeft ? 0..<mid : mid..<w
    }

    /// One hemisphere as a volume (1, 1, D', H', W') with its brain mask, each size cropped down to
    /// a multiple of `multipleOf` (D and H centered; along W the outer edge is trimmed, keeping the
    /// midline). `origin` is the (d, h, w) of its first voxel in the full 2 mm grid.
    public func hemisphere(_ side: Hemisphere, multipleOf m: Int = 1) -> (image: Tensor, label: Tensor, origin: [Int]) {
        precondition(m >= 1, "Colin27.hemisphere: multipleOf must be >= 1")
        let cols = columns(side)
        let sizes = [shape[0] - shape[0] % m, shape[1] - shape[1] % m, cols.count - cols.count % m]
        let trimW = cols.count - sizes[2]
        let w0 = cols.lowerBound == 0 ? trimW : cols.lowerBound
        let origin = [(shape[0] - sizes[0]) / 2, (shape[1] - sizes[1]) / 2, w0]
        return (crop(image, origin, sizes), crop(brain, origin, sizes), origin)
    }

    /// `count` cubic patches of edge `size` (each (1, S, S, S) in x, y: (N, 1, S, S, S)) from one
    /// hemisphere, each with at least 10 % brain when possible. Patch n is a pure function of
    /// (seed, hemisphere, n): RandomStream(seed, layer: 20 + hemisphere, step: n, purpose: .data).
    public func patches(_ side: Hemisphere, count: Int, size s: Int = 32, seed: UInt64) -> (x: Tensor, y: Tensor, origins: [[Int]]) {
        let cols = columns(side)
        precondition(s <= shape[0] && s <= shape[1] && s <= cols.count, "Colin27.patches: size \(s) larger than the hemisphere \(shape[0])×\(shape[1])×\(cols.count)")
        let x = Tensor(shape: [count, 1, s, s, s]) // (N, 1, S, S, S)
        let y = Tensor(shape: [count, 1, s, s, s]) // (N, 1, S, S, S)
        var origins: [[Int]] = []
        let per = s * s * s
        for n in 0..<count {
            var rng = RandomStream(seed: seed, layer: 20 + side.rawValue, step: n, purpose: .data)
            var origin = [0, 0, 0]
            for _ in 0..<64 {
                origin = [rng.uniformIndex(below: shape[0] - s + 1), rng.uniformIndex(below: shape[1] - s + 1),
                          cols.lowerBound + rng.uniformIndex(below: cols.count - s + 1)]
                if brainFraction(origin, s) >= 0.1 { break }
            }
            copyCrop(image, origin, [s, s, s], into: x.data + n * per)
            copyCrop(brain, origin, [s, s, s], into: y.data + n * per)
            origins.append(origin)
        }
        return (x, y, origins)
    }

    func brainFraction(_ o: [Int], _ s: Int) -> Double {
        let (h, w) = (shape[1], shape[2])
        var n = 0
        for z in o[0]..<(o[0] + s) { for y in o[1]..<(o[1] + s) {
            let row = (z * h + y) * w
            for x in o[2]..<(o[2] + s) where brain.data[row + x] > 0 { n += 1 }
        } }
        return Double(n) / Double(s * s * s)
    }

    func crop(_ t: Tensor, _ o: [Int], _ sizes: [Int]) -> Tensor {
        let out = Tensor(shape: [1, 1] + sizes) // (1, 1, D', H', W')
        copyCrop(t, o, sizes, into: out.data)
        return out
    }

    func copyCrop(_ t: Tensor, _ o: [Int], _ sizes: [Int], into dst: UnsafeMutablePointer<Float>) {
        let (h, w) = (shape[1], shape[2])
        var k = 0
        for z in 0..<sizes[0] { for y in 0..<sizes[1] {
            (dst + k).update(from: t.data + ((o[0] + z) * h + o[1] + y) * w + o[2], count: sizes[2])
            k += sizes[2]
        } }
    }
}
