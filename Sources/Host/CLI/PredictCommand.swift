// `flipout predict`: Monte Carlo prediction on a NIfTI volume (or a synthetic one) to NIfTI maps and a PNG.
import ArgumentParser
import Foundation
import Flipout3D

struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Predict a segmentation with voxel-wise uncertainty from T Monte Carlo samples.",
        discussion: """
        Writes, beside the input's grid and header (so 3D Slicer and ITK-SNAP overlay them):
          <stem>_mean.nii.gz     predictive mean probability
          <stem>_entropy.nii.gz  predictive entropy H[E p] (total uncertainty, nats)
          <stem>_mi.nii.gz       mutual information H[E p] - E H[p] (epistemic, nats)
          <stem>_seg.nii.gz      label map (uint8, mean >= 0.5)
          <stem>_preview.png     orthogonal slices: input | probability | mutual information
        The input is z-scored over its nonzero voxels unless --no-normalise.

        Examples:
          flipout predict --checkpoint runs/default/checkpoint.safetensors --input t1.nii.gz --samples 20
          flipout predict --checkpoint runs/default/checkpoint.safetensors --synthetic ood:0
        """)

    @OptionGroup var plugins: PluginOptions
    @Option(help: "Checkpoint written by flipout train.") var checkpoint: String
    @Option(help: "Input volume (.nii or .nii.gz, 3D).") var input: String?
    @Option(help: "Instead of --input, a volume of the checkpoint's synthetic dataset: SPLIT:INDEX (train, validation, test, ood).")
    var synthetic: String?
    @Option(help: "Monte Carlo samples T.") var samples = 16
    @Option(help: "Output folder.") var output = "predictions"
    @Option(help: "Seed of the prediction draws.") var seed: UInt64 = 1
    @Flag(name: .customLong("no-normalise"), help: "Use the input intensities as they are.") var noNormalise = false
    @Option(help: "NaN or infinite input voxels: refuse (default, exit 65), zero (make them 0), or clip (NaN to 0, inf to the volume's finite extreme).")
    var nonfinite: NonFinitePolicy = .refuse
    @Flag(name: .customLong("allow-plugin-change"), help: "Use the checkpoint even if a plugin's SHA-256 changed.") var allowPluginChange = false

    func validate() throws {
        guard (input == nil) != (synthetic == nil) else { throw ValidationError("give exactly one of --input PATH or --synthetic SPLIT:INDEX.") }
        try Bounds.check(samples, Bounds.samples, option: "--samples")
    }

    func run() throws {
        try reportingInputErrors {
            let registry = try plugins.registry()
            let trained = try TrainedModel.load(checkpoint, registry: registry, allowPluginChange: allowPluginChange, log: note)
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
            var image: Tensor, header: NIfTIHeader, stem: String, labels: Tensor?
            if let input {
                let v = try NIfTI.read(input, nonFinite: nonfinite)
                if v.nonFiniteReplaced > 0 {
                    note("note: \(input): replaced \(v.nonFiniteReplaced) NaN or infinite voxel\(v.nonFiniteReplaced == 1 ? "" : "s") (--nonfinite \(nonfinite.rawValue))")
                }
                image = v.data; header = v.header
                let base = (input as NSString).lastPathComponent
                stem = base.replacingOccurrences(of: ".nii.gz", with: "").replacingOccurrences(of: ".nii", with: "")
            } else {
                let parts = synthetic!.split(separator: ":")
                guard parts.count == 2, let split = DataSplit(rawValue: String(parts[0])), let index = Int(parts[1]), index >= 0 else {
                    throw InputError("--synthetic expects SPLIT:INDEX with SPLIT one of train, validation, test, ood (got \(synthetic!)).")
                }
                let data = try trained.training.makeDataset()
                let (x, y) = try data.batch(split, indices: [index])
                image = x.reshaped(data.volumeSize); labels = y.reshaped(data.volumeSize)
                header = NIfTIHeader(shape: data.volumeSize)
                stem = "\(data.name)_\(split.rawValue)_\(index)"
                try NIfTI.write(image, header: header, to: (output as NSString).appendingPathComponent(stem + "_image.nii.gz"))
                try NIfTI.write(labels!, header: header, datatype: .uint8, to: (output as NSString).appendingPathComponent(stem + "_truth_seg.nii.gz"))
            }
            let result = try Prediction.run(model: try trained.binaryModel(), image: image, header: header, samples: samples, seed: seed,
                                            stem: (output as NSString).appendingPathComponent(stem), normalise: input != nil && !noNormalise)
            var mi = 0.0
            for v in result.maps.mutualInformation.buffer { mi += Double(v) }
            print(String(format: "mean mutual information %.5f nats over %d voxels (%d samples)", mi / Double(image.count), image.count, result.maps.samples))
            if let labels {
                print(String(format: "dice %.4f against the generator's labels", Metrics.dice(probabilities: result.maps.mean, labels: labels)))
            }
            for f in result.files.all { print("wrote \(f)") }
        }
    }
}

extension NonFinitePolicy: ExpressibleByArgument {}
