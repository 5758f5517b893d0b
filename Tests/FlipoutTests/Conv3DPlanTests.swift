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
        // 16 channels per group: oneDNN's jit kernels, except below AVX-512 (Conv3DPlan.nativeBackwardWeightsBelowAVX512).
        #expect(Conv3DPlan.choose(w1, engine: .auto, level: level).forward == (level == .avx2 ? .native(.avx2) : .onednn))
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

@Test func onednnLayoutAndStrategyAreThePlans() {
    let w4 = Conv3DGeometry(batch: 4, inChannels: 16, outChannels: 16, size: 32, k: 3)
    let wide = Conv3DGeometry(batch: 2, inChannels: 32, outChannels: 32, size: 8, k: 3)
    let strided = Conv3DGeometry(batch: 2, inChannels: 32, outChannels: 32, size: 8, k: 3, stride: 2)
    func pick(_ g: Conv3DGeometry, _ level: NativeLevel) -> (Conv3DPlan.Layout, Conv3DPlan.ForwardStrategy) {
        let p = Conv3DPlan.choose(g, engine: .auto, level: level)
        #expect(p.forward == .onednn, "\(g): \(p)")
        return (p.layout, p.forwardStrategy)
    }
    // AVX-512 (measured there): channels-last for ungrouped 16->16, every group its own
    // channels-last convolution for 16->16 per group at batch 1 (W1's per-example form), the
    // transposed forward for other 16k channels per group with stride 1, else oneDNN's own choice.
    #expect(pick(w4, .avx512) == (.channelsLast, .direct))
    #expect(pick(w1, .avx512) == (.channelsLastPerGroup, .direct))
    #expect(pick(wide, .avx512) == (.blocked, .transposedBackwardData))
    #expect(pick(strided, .avx512) == (.blocked, .direct))
    // Below AVX-512 (Zen 3): never measured, so oneDNN's defaults, whatever kernels it has there.
    for level in [NativeLevel.avx2, .portable] {
        for g in level == .avx2 ? [wide, strided] : [w4, w1, wide, strided] { #expect(pick(g, level) == (.blocked, .direct)) }
    }
    // The description shows both, and why.
    let d = "\(Conv3DPlan.choose(w4, engine: .auto, level: .avx512))"
    #expect(d.contains("layout channels-last") && d.contains("ungrouped 16->16"), "\(d)")
    #expect("\(Conv3DPlan.choose(wide, engine: .auto, level: .avx512))".contains("(transposed-backward-data)"))
    #expect("\(Conv3DPlan.choose(w1, engine: .auto, level: .avx512))".contains("layout channels-last per group"))
    // Native plans have no oneDNN layout to show.
    #expect(!"\(Conv3DPlan.native(.avx2))".contains("layout"))
}

@Test func pinnedLayoutsBuildOnEveryCPU() throws {
    // Both layouts and both strategies build and run wherever oneDNN runs, with or without a jit
    // kernel for them (correctness: Conv3DEngineTests' sweep).
    let g = Conv3DGeometry(batch: 1, inChannels: 16, outChannels: 16, size: 4, k: 3)
    for layout in Conv3DPlan.Layout.allCases {
        for strategy in Conv3DPlan.ForwardStrategy.allCases {
            let conv = try Conv3D(g, plan: .onednn(strategy, layout: layout))
            #expect(conv.forwardStrategy == strategy && conv.plan.layout == layout)
        }
    }
    // Per group needs the per-example form (batch 1) and the direct forward, and says so.
    let folded = Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 16, size: 4, k: 3).foldedOverBatch()
    #expect(try Conv3D(folded, plan: .onednn(.direct, layout: .channelsLastPerGroup)).plan.layout == .channelsLastPerGroup)
    for (g, strategy) in [(folded, Conv3DPlan.ForwardStrategy.transposedBackwardData),
                          (Conv3DGeometry(batch: 2, inChannels: 32, outChannels: 32, size: 4, k: 3, groups: 2), .direct)] {
        #expect(throws: GeometryError.self) { try Conv3D(g, plan: .onednn(strategy, layout: .channelsLastPerGroup)) }
    }
}

@Test func autoPlanFollowsTheUNetMeasurements() {
    func allNative(_ p: Conv3DPlan, _ level: NativeLevel) -> Bool {
        p.forward == .native(level) && p.backwardData == .native(level) && p.backwardWeights == .native(level)
    }
    // U1's up0 and dec0 (16->8 per group at 32^3): native, plain and per-example.
    let up0 = Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 8, size: 32, k: 3)
    for g in [up0, up0.foldedOverBatch()] {
        #expect(allNative(Conv3DPlan.choose(g, engine: .auto, level: .avx512), .avx512), "\(g)")
    }
    // U2's first level (64-wide rows, <= 16 channels per group): native on AVX-512.
    for g in [Conv3DGeometry(batch: 2, inChannels: 2, outChannels: 16, size: 64, k: 3),
              Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 16, size: 64, k: 3)] {
        for h in [g, g.foldedOverBatch()] {
            #expect(allNative(Conv3DPlan.choose(h, engine: .auto, level: .avx512), .avx512), "\(h)")
        }
    }
    // 16-wide rows (U1's enc1b): oneDNN in every direction, plain and per-example.
    let enc1b = Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 16, size: 16, k: 3)
    for g in [enc1b, enc1b.foldedOverBatch()] {
        let p = Conv3DPlan.choose(g, engine: .auto, level: .avx512)
        #expect(!p.forward.description.hasPrefix("native") && p.backwardWeights == .onednn, "\(g): \(p)")
    }
    // Fewer outputs than inputs: oneDNN's direct forward, not the transposed backward-data.
    let up0U2 = Conv3DGeometry(batch: 2, inChannels: 32, outChannels: 16, size: 64, k: 3)
    for g in [up0U2, up0U2.foldedOverBatch()] {
        let p = Conv3DPlan.choose(g, engine: .auto, level: .avx512)
        #expect(p.forward == .onednn && p.forwardStrategy == .direct, "\(g): \(p)")
    }
    // Below AVX-512: native forward and backward-weights where the kernels take the layer,
    // backward-data on oneDNN where they do not take its transpose; strided layers stay on oneDNN.
    let up1 = Conv3DGeometry(batch: 2, inChannels: 32, outChannels: 16, size: 16, k: 3)
    for g in [up1, up1.foldedOverBatch()] {
        let p = Conv3DPlan.choose(g, engine: .auto, level: .avx2)
        #expect(p.forward == .native(.avx2) && p.backwardWeights == .native(.avx2) && p.backwardData == .onednn, "\(g): \(p)")
    }
    #expect(allNative(Conv3DPlan.choose(enc1b, engine: .auto, level: .avx2), .avx2))
    let down = Conv3DGeometry(batch: 2, inChannels: 8, outChannels: 16, size: 32, k: 3, stride: 2)
    #expect(Conv3DPlan.choose(down, engine: .auto, level: .avx2).backwardWeights == .onednn)
    // U1's down-sampling enc1a (8->16 per group, stride 2) on AVX-512: native backward-weights
    // (oneDNN's is gemm), forward and backward-data on oneDNN, plain and per-example; with 16
    // input channels per group (enc2a) oneDNN's jit backward-weights stays.
    for g in [down, down.foldedOverBatch()] {
        let p = Conv3DPlan.choose(g, engine: .auto, level: .avx512)
        #expect(p.forward == .onednn && p.backwardData == .onednn && p.backwardWeights == .native(.avx512), "\(g): \(p)")
        #expect(p.reason.contains("strided"), "\(p)")
    }
    let enc2a = Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 32, size: 16, k: 3, stride: 2)
    for g in [enc2a, enc2a.foldedOverBatch()] {
        let p = Conv3DPlan.choose(g, engine: .auto, level: .avx512)
        #expect([p.forward, p.backwardData, p.backwardWeights].allSatisfy { $0 == .onednn }, "\(g): \(p)")
    }
    // W1 and W4 keep their measured plans; U1's enc1b per example (16-wide rows) is not split per group.
    #expect(Conv3DPlan.choose(w1, engine: .auto, level: .avx512).layout == .channelsLastPerGroup)
    #expect(Conv3DPlan.choose(enc1b.foldedOverBatch(), engine: .auto, level: .avx512).layout == .blocked)
}
