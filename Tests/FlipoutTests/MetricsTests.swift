// Metrics: Dice, NLL, Brier, ECE, AUROC and MC uncertainty maps against hand-computed cases.
import Foundation
import Testing
import Flipout3D
import TestSupport

private func t(_ v: [Float]) -> Tensor { Tensor(shape: [v.count], values: v) }

@Test func diceCountsThresholdedOverlap() {
    // Predicted {0, 1}, labels {0, 2}: overlap 1, Dice = 2·1 / (2 + 2).
    #expect(abs(Metrics.dice(probabilities: t([0.9, 0.6, 0.2, 0.4]), labels: t([1, 0, 1, 0])) - 0.5) < 1e-12)
    #expect(Metrics.dice(probabilities: t([0.1, 0.2]), labels: t([0, 0])) == 1) // empty vs empty
    #expect(Metrics.dice(probabilities: t([0.9, 0.2]), labels: t([0, 0])) == 0)
    #expect(Metrics.dice(probabilities: t([0.5]), labels: t([1])) == 1) // threshold 0.5 is inclusive
}

@Test func nllAndBrierMatchHandValues() {
    let p = t([0.8, 0.3]), y = t([1, 0])
    #expect(abs(Metrics.nll(probabilities: p, labels: y) - (-(log(0.8) + log(0.7)) / 2)) < 1e-6)
    #expect(abs(Metrics.brier(probabilities: p, labels: y) - 0.065) < 1e-7)
    // Clamping keeps a confident mistake finite: −ln(1e-7).
    #expect(abs(Metrics.nll(probabilities: t([0]), labels: t([1])) - (-log(1e-7))) < 1e-6)
}

@Test func eceOfConstructedCase() {
    // Four at p = 0.9 (3 correct): conf 0.9, acc 0.75 → |0.15|·4/6.
    // Two at p = 0.2 (predict 0, conf 0.8; one correct): acc 0.5 → |0.3|·2/6. ECE = 0.1 + 0.1.
    let e = Metrics.ece(probabilities: t([0.9, 0.9, 0.9, 0.9, 0.2, 0.2]), labels: t([1, 1, 1, 0, 0, 1]))
    #expect(abs(e - 0.2) < 1e-6)
    // Both groups in one bin when there is a single bin: |Σcorrect − Σconf| / N = |4 − 5.2| / 6.
    let one = Metrics.ece(probabilities: t([0.9, 0.9, 0.9, 0.9, 0.2, 0.2]), labels: t([1, 1, 1, 0, 0, 1]), bins: 1)
    #expect(abs(one - 0.2) < 1e-6)
    // Perfectly calibrated and certain.
    #expect(Metrics.ece(probabilities: t([1, 0, 1]), labels: t([1, 0, 1])) == 0)
}

@Test func aurocIsMannWhitneyWithTiesHalf() {
    #expect(abs(Metrics.auroc(scores: [0.1, 0.4, 0.35, 0.8], positives: [false, false, true, true]) - 0.75) < 1e-12)
    // Pairs (pos, neg): (2,1)=1, (2,2)=½, (3,1)=1, (3,2)=1 → 3.5 / 4.
    #expect(abs(Metrics.auroc(scores: [1, 2, 2, 3], positives: [false, true, false, true]) - 0.875) < 1e-12)
    #expect(Metrics.auroc(scores: [5, 5, 5], positives: [true, false, false]) == 0.5)
    #expect(Metrics.auroc(scores: [3, 2, 1], positives: [false, true, true]) == 0)
    #expect(Metrics.auroc(scores: [1, 2], positives: [true, true]).isNaN)
}

@Test func mutualInformationIsZeroForEqualSamplesAndPositiveOtherwise() {
    let same = UncertaintyMaps(samples: [t([0.3, 0.7, 0.0]), t([0.3, 0.7, 0.0]), t([0.3, 0.7, 0.0])])
    let h03 = -(0.3 * log(0.3) + 0.7 * log(0.7))
    assertNear(same.mean.array, [0.3, 0.7, 0], "mean")
    assertNear(same.predictiveEntropy.array, [Float(h03), Float(h03), 0], "predictive entropy")
    assertNear(same.mutualInformation.array, [0, 0, 0], "MI of equal samples")

    // p ∈ {0, 1}: mean ½, H[p̄] = ln 2, E H = 0, MI = ln 2. p ∈ {0.2, 0.8}: MI = ln 2 − H(0.2).
    let mixed = UncertaintyMaps(samples: [t([0, 0.2]), t([1, 0.8])])
    let h02 = -(0.2 * log(0.2) + 0.8 * log(0.8))
    assertNear(mixed.mean.array, [0.5, 0.5], "mean")
    assertNear(mixed.expectedEntropy.array, [0, Float(h02)], "expected entropy")
    assertNear(mixed.mutualInformation.array, [Float(log(2.0)), Float(log(2.0) - h02)], "MI")
    #expect(mixed.mutualInformation.array.allSatisfy { $0 > 0 })
}

private func assertNear(_ a: [Float], _ b: [Float], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.count == b.count, "\(what)", sourceLocation: sourceLocation)
    for (x, y) in zip(a, b) { #expect(abs(x - y) < 1e-6, "\(what): \(a) vs \(b)", sourceLocation: sourceLocation) }
}
