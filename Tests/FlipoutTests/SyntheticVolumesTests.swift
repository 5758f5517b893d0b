// SyntheticVolumes: determinism, split independence, lesion fraction, contrast and normalisation.
import Testing
import Flipout3D

@Test func syntheticVolumesArePureFunctionsOfSeedSplitIndex() {
    let a = SyntheticVolumes(seed: 7), b = SyntheticVolumes(seed: 7)
    let v1 = a.volume(split: .train, index: 3), v2 = b.volume(split: .train, index: 3)
    #expect(v1.image.shape == [1, 32, 32, 32] && v1.label.shape == [1, 32, 32, 32])
    #expect(v1.image.array == v2.image.array && v1.label.array == v2.label.array)
    // A batch holds exactly the individual volumes, in order, whatever else is in it.
    let batch = a.batch(split: .train, indices: [5, 3])
    #expect(batch.x.shape == [2, 1, 32, 32, 32])
    #expect(Array(batch.x.array[32768...]) == v1.image.array)
    #expect(Array(batch.y.array[32768...]) == v1.label.array)
}

@Test func syntheticSplitsIndicesAndSeedsDiffer() {
    let g = SyntheticVolumes(seed: 7)
    let base = g.volume(split: .train, index: 0)
    let others = [g.volume(split: .validation, index: 0), g.volume(split: .test, index: 0),
                  g.volume(split: .outOfDistribution, index: 0), g.volume(split: .train, index: 1),
                  SyntheticVolumes(seed: 8).volume(split: .train, index: 0)]
    for o in others {
        #expect(o.image.array != base.image.array)
        #expect(o.label.array != base.label.array)
    }
}

@Test func syntheticLesionsHaveSaneSizeAndContrast() {
    let g = SyntheticVolumes(seed: 1)
    var fractions: [Double] = []
    var contrast: [SyntheticVolumes.Split: Double] = [:]
    for split in [SyntheticVolumes.Split.train, .outOfDistribution] {
        for i in 0..<12 {
            let (x, y) = g.volume(split: split, index: i)
            let n = Double(x.count)
            let mean = x.array.reduce(0.0) { $0 + Double($1) } / n
            let sd = (x.array.reduce(0.0) { $0 + Double($1) * Double($1) } / n - mean * mean).squareRoot()
            #expect(abs(mean) < 1e-4 && abs(sd - 1) < 1e-3, "not z-scored: mean \(mean) sd \(sd)")
            let inside = (0..<x.count).filter { y.data[$0] == 1 }
            #expect(y.array.allSatisfy { $0 == 0 || $0 == 1 })
            let f = Double(inside.count) / n
            #expect(f > 0.002 && f < 0.2, "\(split) \(i): lesion fraction \(f)")
            fractions.append(f)
            let mIn = inside.reduce(0.0) { $0 + Double(x.data[$1]) } / Double(max(inside.count, 1))
            let mOut = (mean * n - mIn * Double(inside.count)) / (n - Double(inside.count))
            contrast[split, default: 0] += (mIn - mOut) / 12
        }
    }
    // On average over a split (a single volume's low-frequency texture can outweigh its lesion):
    // in-distribution lesions are brighter, OOD (inverted) lesions darker.
    #expect(contrast[.train]! > 0.5, "train contrast \(contrast[.train]!)")
    #expect(contrast[.outOfDistribution]! < -0.3, "ood contrast \(contrast[.outOfDistribution]!)")
    let meanFraction = fractions.reduce(0, +) / Double(fractions.count)
    #expect(meanFraction > 0.01 && meanFraction < 0.15, "mean lesion fraction \(meanFraction)")
}

@Test func syntheticLesionsAreNotFoundByThresholdAlone() {
    // The best global threshold on the train split must not segment the lesions well.
    let g = SyntheticVolumes(seed: 3)
    let (x, y) = g.batch(split: .train, indices: Array(0..<8))
    var best = 0.0
    for k in 0..<40 {
        let th = Float(k) * 0.1
        var inter = 0, np = 0, nl = 0
        for i in 0..<x.count {
            let p = x.data[i] >= th, l = y.data[i] == 1
            if p { np += 1 }; if l { nl += 1 }; if p && l { inter += 1 }
        }
        best = max(best, 2 * Double(inter) / Double(max(np + nl, 1)))
    }
    #expect(best < 0.5, "best threshold Dice \(best)")
}

@Test func syntheticSizeIsConfigurable() {
    let g = SyntheticVolumes(seed: 2, size: [16, 24, 20])
    let (x, y) = g.volume(split: .test, index: 0)
    #expect(x.shape == [1, 16, 24, 20] && y.shape == [1, 16, 24, 20])
    #expect(y.array.contains(1))
    #expect(g.all(.validation).x.shape == [16, 1, 16, 24, 20])
}

@Test func syntheticLesionCountVaries() {
    // Connected components (6-neighbour) of the label per volume: 1–3 lesions, not always the same.
    let g = SyntheticVolumes(seed: 4)
    var counts = Set<Int>()
    for i in 0..<12 {
        let y = g.volume(split: .train, index: i).label
        var seen = [Bool](repeating: false, count: y.count)
        var components = 0
        for start in 0..<y.count where y.data[start] == 1 && !seen[start] {
            components += 1
            var stack = [start]; seen[start] = true
            while let v = stack.popLast() {
                let (z, r, x) = (v / 1024, (v / 32) % 32, v % 32)
                for (dz, dy, dx) in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)] {
                    let (a, b, c) = (z + dz, r + dy, x + dx)
                    guard (0..<32).contains(a), (0..<32).contains(b), (0..<32).contains(c) else { continue }
                    let u = (a * 32 + b) * 32 + c
                    if y.data[u] == 1 && !seen[u] { seen[u] = true; stack.append(u) }
                }
            }
        }
        #expect((1...3).contains(components), "volume \(i): \(components) lesions")
        counts.insert(components)
    }
    #expect(counts.count >= 2, "every volume has \(counts) lesions")
}
