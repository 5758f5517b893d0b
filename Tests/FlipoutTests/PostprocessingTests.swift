// Largest-connected-component post-processing: components by hand, and the validation decision keeps it only where Dice rises.
import Testing
import Foundation
import Flipout3D

@Suite struct PostprocessingTests {
    /// On a 1×4×6 grid: a 5-voxel blob and a 2-voxel blob of class 1 (touching only diagonally,
    /// so separate under face connectivity), and a class-2 voxel left alone.
    @Test func largestComponentKeepsTheBiggerBlob() {
        let shape = [1, 4, 6]
        let labels = [1, 1, 0, 0, 0, 2,
                      1, 1, 0, 0, 0, 0,
                      0, 1, 0, 0, 0, 0,
                      0, 0, 1, 1, 0, 0]
        let out = Postprocessing(largestComponentClasses: [1]).apply(labels, shape: shape)
        #expect(out == [1, 1, 0, 0, 0, 2,
                        1, 1, 0, 0, 0, 0,
                        0, 1, 0, 0, 0, 0,
                        0, 0, 0, 0, 0, 0])
        #expect(Postprocessing.largestComponent([Bool](repeating: false, count: 8), shape: [2, 2, 2]).allSatisfy { !$0 })
        #expect(Postprocessing.none.apply(labels, shape: shape) == labels)
    }

    /// Class 1 has a false-positive island in the prediction (removing it helps); class 2 is truly
    /// two separate pieces (removing the smaller hurts): only class 1 is kept.
    @Test func decisionKeepsOnlyWhatImprovesValidationDice() {
        let shape = [1, 3, 8]
        let truth = [1, 1, 0, 0, 0, 0, 0, 0,
                     1, 1, 0, 0, 0, 2, 0, 2,
                     0, 0, 0, 0, 0, 2, 0, 2]
        let prediction = [1, 1, 0, 0, 1, 0, 0, 0,
                          1, 1, 0, 0, 0, 2, 0, 2,
                          0, 0, 0, 0, 0, 2, 0, 0]
        let (plan, scores) = Postprocessing.decide(cases: [(prediction, truth, shape)], classCount: 3)
        #expect(plan == Postprocessing(largestComponentClasses: [1]))
        #expect(abs(scores[0].before - 8.0 / 9) < 1e-12 && scores[0].after == 1)
        #expect(abs(scores[1].before - 6.0 / 7) < 1e-12 && abs(scores[1].after - 4.0 / 6) < 1e-12)
    }
}

@Test func postprocessingRoundTripsThroughCheckpointMetadata() throws {
    var c = Checkpoint()
    #expect(Postprocessing(checkpoint: c) == .none)
    let p = Postprocessing(largestComponentClasses: [2, 1])
    let data = try JSONEncoder().encode(p)
    c.metadata[Postprocessing.checkpointKey] = String(decoding: data, as: UTF8.self)
    #expect(Postprocessing(checkpoint: c) == p && p.largestComponentClasses == [1, 2])
    #expect(p.apply([Int32(1), 0, 1], shape: [1, 1, 3]) == [1, 0, 0])
}
