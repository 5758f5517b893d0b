// The default target spacing (SpacingPlan): the median kept when the default patch covers a quarter of the median case, else coarsened as nnU-Net's 3d_lowres rule does.
import Foundation
import Testing
import Flipout3D

@Suite struct SpacingPlanTests {
    static let shape: UNetConfig = { var u = UNetConfig(); u.inputChannels = 1; u.classCount = 2; return u }()

    /// The patch `PatchSizePlan` gives at `spacing` for a case of `shape` mm-extent `extent` (mm per axis).
    static func coverage(extentMM: [Double], spacing: [Double]) -> Double {
        let voxels = (0..<3).map { max(1, Int((extentMM[$0] / spacing[$0]).rounded())) }
        let p = PatchSizePlan.patchSize(medianShape: voxels, spacing: spacing, shape: shape, batchSize: 2)
        return (0..<3).map { min(1, Double(p[$0]) / Double(voxels[$0])) }.reduce(1, *)
    }

    static func plan(_ spacing: [Double], _ voxels: [Int]) -> (spacing: [Double], coverage: Double) {
        SpacingPlan.spacing(medianSpacing: spacing, medianShape: voxels) { s, sp in
            PatchSizePlan.patchSize(medianShape: s, spacing: sp, shape: Self.shape, batchSize: 2)
        }
    }

    @Test func smallCasesKeepTheMedianSpacing() {
        // The synthetic folder's 32³-ish cases: the patch is the whole case.
        let p = Self.plan([1.1, 0.9, 1.3], [34, 35, 29])
        #expect(p.spacing == [1.1, 0.9, 1.3] && p.coverage == 1, "\(p)")
    }

    @Test func aWholeHeadAt1mmIsCoarsenedUntilThePatchCoversAQuarter() {
        // Colin27 cropped to its nonzero box: 179 × 215 × 179 voxels at 1 mm. At 1 mm the default
        // patch (60 × 64 × 64 within 1 GiB) covers 3.6 % of it.
        let extent = [179.0, 215, 179]
        #expect(Self.coverage(extentMM: extent, spacing: [1, 1, 1]) < 0.04)
        let p = Self.plan([1, 1, 1], [179, 215, 179])
        // Isotropic stays isotropic, 1.03 a step: 1.03^k for the first k that covers a quarter.
        #expect(p.spacing[0] == p.spacing[1] && p.spacing[1] == p.spacing[2], "\(p)")
        let k = (log(p.spacing[0]) / log(1.03)).rounded()
        #expect(abs(pow(1.03, k) - p.spacing[0]) < 1e-3, "\(p.spacing[0]) is not 1.03^k")
        // Independently: it covers a quarter, one step finer does not.
        #expect(p.coverage >= 0.25 && Self.coverage(extentMM: extent, spacing: p.spacing) >= 0.25, "\(p)")
        let finer = pow(1.03, k - 1)
        #expect(Self.coverage(extentMM: extent, spacing: [finer, finer, finer]) < 0.25, "\(finer)")
        #expect(p.spacing[0] > 1.8 && p.spacing[0] < 2.1, "about 2 mm: \(p)")
    }

    @Test func anAnisotropicDatasetCoarsensItsFineAxesFirst() {
        // 5 mm slices of 0.5 mm in-plane pixels, 40 × 512 × 512: the in-plane axes grow alone while
        // the slice axis is more than twice as coarse, and the slice spacing never shrinks.
        let p = Self.plan([5, 0.5, 0.5], [40, 512, 512])
        #expect(p.coverage >= 0.25, "\(p)")
        #expect(p.spacing[1] == p.spacing[2] && p.spacing[1] > 0.5, "\(p)")
        if p.spacing[0] == 5 {
            #expect(5 / p.spacing[1] > 2 / 1.03, "the slice axis stays while the others are more than 2x finer: \(p)")
        } else {
            #expect(p.spacing[0] / p.spacing[1] <= 2 * 1.03 + 1e-9, "all axes grow together once within 2x: \(p)")
        }
    }
}
