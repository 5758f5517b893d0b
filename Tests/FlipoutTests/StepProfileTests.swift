// The U-Net bench's accounting: exclusive phase times in StepProfile, and the workloads' GFLOP against the issue's own count.
import Foundation
import Testing
import Flipout3D

@Test func nestedProbesAreAttributedExclusively() {
    let profile = StepProfile()
    let start = DispatchTime.now().uptimeNanoseconds
    StepProfile.$current.withValue(profile) {
        StepProfile.measure(.convForward) {
            usleep(10_000)
            StepProfile.measure(.normalization) { usleep(30_000) }
        }
    }
    let wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
    let outer = profile.milliseconds(.convForward), inner = profile.milliseconds(.normalization)
    #expect(inner >= 30 && outer >= 10, "outer \(outer) ms, inner \(inner) ms")
    // Double counting the nested probe would make the phases exceed the wall time.
    #expect(outer + inner <= wall + 0.01, "outer \(outer) + inner \(inner) > wall \(wall)")
    // Outside a bound profile a probe records nothing.
    StepProfile.measure(.loss) { usleep(1000) }
    #expect(profile.milliseconds(.loss) == 0)
}

@Test func unetWorkloadsCountTheIssuesGFLOP() {
    // Issue 23: "U2 runs 205 GFLOP per step (one convolution per Flipout layer, forward and two backward passes)".
    #expect(abs(UNetWorkload.u2.stepGFLOP - 205) < 1, "U2: \(UNetWorkload.u2.stepGFLOP) GFLOP")
    #expect(UNetWorkload.u1.stepGFLOP < UNetWorkload.u2.stepGFLOP && UNetWorkload.u2.stepGFLOP < UNetWorkload.u3.stepGFLOP)
}
