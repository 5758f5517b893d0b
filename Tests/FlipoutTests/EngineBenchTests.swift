// EngineBench: a smoke test that the timing harness runs (speed itself is measured by flipout bench).
import Foundation
import Testing
import Flipout3D

@Test func engineBenchTimesASmallGeometry() throws {
    let t = try EngineBench.timeStep(geometry: .init(batch: 1, inChannels: 4, outChannels: 4, size: 8, k: 3), repeats: 3, warmup: 1)
    #expect(t.forwardMs > 0 && t.backwardDataMs > 0 && t.backwardWeightsMs > 0 && t.stepMs > 0)
    #expect(!t.implementations[0].isEmpty)
}
