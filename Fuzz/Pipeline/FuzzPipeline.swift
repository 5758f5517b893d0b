// libFuzzer harness: a NIfTI file through the prediction path after the reader: geometry checks, RAS
// reorientation and resampling, normalisation, one window of a tiny U-Net, the maps resampled back,
// the preview and the output header. Any throw from a documented check is a correct refusal; a
// crash, a sanitizer report, a hang, a non-finite map or an output header the reader refuses is a bug.
@testable import Flipout3D

/// A deterministic U-Net (2 levels, width 2, instance norm): 1 channel in, 2 classes out.
let model: UNet = {
    var config = ModelConfig()
    config.bayesian = false
    var shape = UNetConfig()
    shape.levels = 2; shape.width = 2; shape.inputChannels = 1; shape.classCount = 2
    let registry = try! PluginRegistry(PluginSearch(explicitPaths: [], environmentPath: nil, bundledDirectory: nil))
    return try! UNet(config, shape: shape, registry: registry, seed: 1)
}()

/// The plan a checkpoint would replay: 2 mm, z-score with a dataset's statistics.
let plan = PreprocessingPlan(spacing: [2, 2, 2], channelNames: ["T1"], channels: [.zScore(mean: 100, std: 50)],
                             labels: ["background": 0, "foreground": 1], classCount: 2)

/// Prepared grids larger than this pass the checks but are skipped here (fuzzing speed, not a refusal).
let fuzzGridVoxels = 1 << 15
let window = [8, 8, 8]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPipeline(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // --nonfinite clip: the policy that lets the most values through.
    guard let volume = try? NIfTI.decode(bytes, path: "fuzz.nii", nonFinite: .clip) else { return 0 }
    precondition(volume.data.buffer.allSatisfy(\.isFinite), "non-finite voxel after --nonfinite clip")

    // Every output predict writes carries this header: the reader must take it back.
    let out = NIfTI.outputHeader(volume.header, frames: 2, datatype: .float32)
    do { _ = try NIfTI.parseHeader(NIfTI.encodeHeader(out), path: "out.nii", allowFourD: true) } catch {
        preconditionFailure("an output header the reader refuses: \(error)")
    }

    // The preview of the input: any finite range.
    _ = PNGPreview.render([PNGPreview.Panel(volume.data)], at: PNGPreview.center(of: volume.header.shape))

    let source = VoxelGrid(shape: volume.header.shape, affine: volume.header.affine)
    let target: VoxelGrid
    do { target = try plan.checkedPreparedGrid(for: source, path: "fuzz.nii", header: volume.header) } catch is VolumeGeometryError { return 0 } catch {
        preconditionFailure("checkedPreparedGrid threw \(error)")
    }
    guard target.shape.reduce(1, *) <= fuzzGridVoxels else { return 0 }
    let prepared: PreparedCase
    do { prepared = try plan.prepare(id: "fuzz", images: [volume], label: nil, paths: ["fuzz.nii"]) } catch {
        preconditionFailure("prepare refused a grid checkedPreparedGrid passed: \(error)")
    }
    precondition(prepared.geometry.preparedShape == target.shape, "prepared \(prepared.geometry.preparedShape) != checked \(target.shape)")
    precondition(prepared.image.buffer.allSatisfy(\.isFinite), "non-finite prepared voxel")

    // One window: the corner of the prepared image (padded by the sliding window if smaller).
    let (d, h, w) = (target.shape[0], target.shape[1], target.shape[2])
    let c = [min(d, window[0]), min(h, window[1]), min(w, window[2])]
    let corner = Tensor(shape: [1] + c) // (1, d, h, w)
    for z in 0..<c[0] { for y in 0..<c[1] { for x in 0..<c[2] {
        corner.data[(z * c[1] + y) * c[2] + x] = prepared.image.data[(z * h + y) * w + x]
    } } }
    let maps: PredictiveMaps
    do {
        maps = try SlidingWindow.predict(corner, classes: 2, draws: 1, options: SlidingWindowOptions(window: window, overlap: 0.5, batch: 1)) { x, _ in
            var ctx = StepContext.prediction(seed: 1, draw: 0)
            ctx.mode = .center
            return try model.probabilities(x, ctx)
        }
    } catch { preconditionFailure("prediction threw \(error)") }
    precondition(maps.windows == 1, "\(maps.windows) windows for a \(c) corner")
    for m in [maps.probabilities, maps.predictiveEntropy, maps.mutualInformation, maps.expectedEntropy] {
        precondition(m.buffer.allSatisfy(\.isFinite), "non-finite map")
    }

    // The maps back onto the source grid, as predict writes them.
    let full = Tensor(shape: [2] + target.shape) // (K, D, H, W), the corner filled in
    let plane = target.shape.reduce(1, *), cn = c.reduce(1, *)
    for k in 0..<2 { for z in 0..<c[0] { for y in 0..<c[1] { for x in 0..<c[2] {
        full.data[k * plane + (z * h + y) * w + x] = maps.probabilities.data[k * cn + (z * c[1] + y) * c[2] + x]
    } } } }
    let back = plan.restore(full, to: prepared.geometry, interpolation: .linear)
    precondition(back.shape == [2] + source.shape, "restored \(back.shape)")
    precondition(back.buffer.allSatisfy { $0.isFinite && $0 >= -1e-5 && $0 <= 1 + 1e-5 }, "restored probability outside [0, 1]")
    let foreground = Tensor(shape: source.shape)
    foreground.data.update(from: back.data + source.shape.reduce(1, *), count: source.shape.reduce(1, *))
    _ = PNGPreview.render([PNGPreview.Panel(volume.data), PNGPreview.Panel(foreground, colormap: .hot, range: 0...1)],
                          at: PNGPreview.centroid(of: foreground, threshold: 0.5) ?? PNGPreview.center(of: source.shape))
    return 0
}
