// Conv3DPlan: a pure, printable choice per geometry, engine choice and CPU level; tests pin it.
import Testing
import Flipout3D

private let w3Layers = [(1, 8), (8, 8), (8, 1)].map {
    Conv3DGeometry(batch: 8, inChannels: $0.0, outChannels: $0.1, size: 32, k: 3).foldedOverBatch()
}
private let w1 = Conv3DGeometry(batch: 4, inChannels: 16, outChannels: 16, size: 32, k: 3).foldedOverBatch()

@Test func autoPlanRunsNarrowLayersNatively() {
    for level in NativeLevel.allCases {
        for g in w3Layers {
            let p = Conv3DPlan.choose(g, engine: .auto, level: level)
            #expect(p.forward == .native(level) && p.backwardData == .native(level) && p.backwardWeights == .native(level), "\(g): \(p)")
        }
        // 16 channels per group: oneDNN's jit kernels.
        #expect(Conv3DPlan.choose(w1, engine: .auto, level: level).forward == .onednn)
    }
}

@Test func forcedEnginesAndWhereNativeCannotRun() {
    let g = w3Layers[1]
    #expect(Conv3DPlan.choose(g, engine: .onednn, level: .avx512).backwardWeights == .onednn)
    #expect(Conv3DPlan.choose(w1, engine: .native, level: .avx2).forward == .native(.avx2))
    // Stride 2 has no native kernel: forcing native keeps oneDNN and says why.
    let strided = Conv3DGeometry(batch: 2, inChannels: 8, outChannels: 8, size: 16, k: 3, stride: 2)
    let p = Conv3DPlan.choose(strided, engine: .native, level: .avx512)
    #expect(p.forward == .onednn && p.reason.contains("stride 1"))
    #expect("\(p)".contains("forward oneDNN"))
}

@Test func enginesBuildTheirPlan() throws {
    let g = Conv3DGeometry(batch: 2, inChannels: 1, outChannels: 4, size: 6, k: 3)
    #expect(try Conv3D(g).plan == Conv3DPlan.choose(g))
    let pinned = Conv3DPlan(forward: .native(.portable), backwardData: .onednn, backwardWeights: .onednn)
    let conv = try Conv3D(g, plan: pinned)
    #expect(conv.plan == pinned)
    #expect(conv.implementations.forward == "native portable")
    #expect(conv.implementations.backwardWeights != "native portable")
}
