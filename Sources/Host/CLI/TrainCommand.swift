// `flipout train`: train a Bayesian segmentation network, then evaluate it on the test and OOD splits.
import ArgumentParser
import Foundation
import Flipout3D

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a Bayesian 3D segmentation network (ELBO, Adam) and evaluate it.",
        discussion: """
        With --data DIR (a dataset folder in the nnU-Net v2 / MSD layout, see
        `flipout datasets --help`) it trains a U-Net with C input channels and K
        classes on patches: every case cropped to its nonzero region, reoriented
        to RAS, resampled to the median spacing (or --spacing) and normalised
        per channel (MRI per image, CT with the dataset's statistics); a third of
        the patches centred on a random foreground voxel, the rest anywhere,
        each augmented on the fly as nnU-Net does (--augmentation default|none).
        Every epoch is --steps-per-epoch steps whatever the dataset size; Adam
        (--lr) with nnU-Net's polynomial decay lr * (1 - epoch/epochs)^0.9.
        The loss is softmax cross-entropy + soft Dice (MONAI's DiceCELoss,
        nnU-Net's DC_and_CE_loss) + beta * KL / (training voxels); the
        checkpoint records the preprocessing plan and the patch size, so
        `flipout predict` replays them. Validation (--fold k) and test cases
        (imagesTs with labelsTs) report Dice per class.

        Without --data it trains the built-in binary task (a sigmoid
        encoder-decoder on the embedded synthetic volumes, or --dataset
        colin27); its loss is the mean per-voxel binary cross-entropy
        + beta * KL / (training volumes * voxels). `flipout datasets
        export-synthetic DIR` writes the multi-class synthetic set as a folder.

        Every epoch writes metrics.csv, metrics.json and checkpoint.safetensors
        (atomically) in the run folder; --resume continues a run bit-exactly, and
        with a larger --epochs extends it (also a finished one). A new run needs an
        empty (or missing) run folder, or --overwrite.

        Examples:
          flipout datasets export-synthetic data/synthetic && flipout train --data data/synthetic
          flipout train --data ~/Dataset001_BrainTumour --fold 0 --patch 64,64,64 --levels 4
          flipout train --data data/synthetic --deterministic --run runs/det
          flipout train --data data/synthetic --init-from runs/det/checkpoint.safetensors --moped-delta 0.1
          flipout train --data data/synthetic --bayesian-layers last:2
          flipout train --epochs 10
          flipout train --prior org.flipout3d.laplace --prior-param scale=0.1
          flipout train --plugin ./libMyPrior.so --prior org.example.myprior
          flipout train --foreign-prior './libdens.so:my_logpdf(x:d,loc:d=0,scale:d=1)->d@org.example.cauchy' --prior org.example.cauchy
          flipout train --posterior org.flipout3d.gaussian-mixture --posterior-hyper components=2
          flipout train --resume runs/default/checkpoint.safetensors
          flipout train --resume runs/default/checkpoint.safetensors --epochs 60
          OMP_NUM_THREADS=1 mpirun -np 2 --bind-to none flipout train --batch-size 4   (or scripts/train-mpi -np 2)
        """)

    @OptionGroup var plugins: PluginOptions
    @OptionGroup var model: ModelOptions
    @OptionGroup var distribution: DistributedOptions

    @Option(help: "Epochs to train (default 30; with --data \(FolderTrainingDefaults.epochs)).") var epochs: Int?
    @Option(name: .customLong("batch-size"), help: "Volumes (or, with --data, patches) per step, over all ranks when distributed (default 4; with --data 2, as nnU-Net).") var batchSize: Int?
    @Option(name: .customLong("lr"), help: "Adam learning rate (default 3e-3; with --data \(FolderTrainingDefaults.learningRate)).") var learningRate: Float?
    @Option(name: .customLong("positive-lr-scale"), help: "With --data: learning-rate multiplier of positive-support (e.g. Beta) posterior parameters, which are learned as logarithms (default \(PositiveWeightPolicy.learningRateScale)).") var positiveLRScale: Float?
    @Option(help: "Weight of the KL term in the ELBO.") var beta: Double = 1
    @Option(name: .customLong("beta-anneal"), help: "Anneal beta linearly from 0 over this many epochs (0: off).") var betaAnneal = 0
    @Option(help: "Seed of every random draw (data, init, noise, signs).") var seed: UInt64 = 1
    @Option(help: "Dataset: synthetic (embedded default) or colin27 (needs Debian's mricron-data).") var dataset = "synthetic"
    @Option(name: .customLong("volume-size"), help: "Edge of the synthetic volumes (or Colin27 patches).") var volumeSize = 32
    @Option(name: .customLong("train-volumes"), help: "Training volumes (or patches).") var trainVolumes = 48
    @Option(name: .customLong("test-volumes"), help: "Test and OOD volumes each.") var testVolumes = 12
    @Option(help: "Monte Carlo samples per volume at evaluation.") var samples = 8
    @Option(name: .customLong("run"), help: "Run folder for checkpoint and metrics.") var runFolder = "runs/default"
    @Option(help: "Continue the run saved in this checkpoint (with --epochs N: train until epoch N).") var resume: String?
    @Flag(help: "Replace the previous run's files in a non-empty run folder.") var overwrite = false
    @Flag(name: .customLong("allow-plugin-change"), help: "Resume even if a plugin's SHA-256 changed since the checkpoint.") var allowPluginChange = false
    @Flag(help: "No progress line.") var quiet = false

    @OptionGroup(title: "Dataset folder (--data)") var folder: FolderTrainingOptions

    func validate() throws {
        try validating { try trainingConfig().validate() }
        if folder.data == nil && positiveLRScale != nil && resume == nil {
            throw ValidationError("--positive-lr-scale applies to --data training (the U-Net); add --data DIR.")
        }
        if folder.data != nil && model.afterPositive != nil {
            throw ValidationError("--after-positive applies to the built-in binary network; the U-Net of --data already normalises after every convolution (instance norm, --norm), which is the positive-weight recipe.")
        }
        if resume != nil {
            // Options that set what the checkpoint already fixes cannot be honoured on resume.
            let fixed = GivenOptions.given(["--batch-size", "--lr", "--positive-lr-scale", "--beta", "--beta-anneal", "--seed", "--dataset", "--volume-size",
                                            "--train-volumes", "--test-volumes", "--samples", "--overwrite"] + ModelOptions.longNames)
            guard fixed.isEmpty else {
                throw ValidationError("--resume continues the run as its checkpoint stored it, so \(fixed.joined(separator: ", ")) cannot be changed; drop \(fixed.count == 1 ? "it" : "them"), or start a new run (--run DIR). --epochs, --run and the plugin options may be given.")
            }
        }
    }

    /// --epochs and --lr, or their defaults: the binary trainer's (TrainingConfig), or with --data
    /// the U-Net's (FolderTrainingDefaults, measured separately).
    var epochsToTrain: Int { epochs ?? (folder.data != nil ? FolderTrainingDefaults.epochs : TrainingConfig().epochs) }
    var adamLearningRate: Float { learningRate ?? (folder.data != nil ? FolderTrainingDefaults.learningRate : TrainingConfig().learningRate) }

    /// The training settings the options give (a resumed run takes them from its checkpoint).
    func trainingConfig() -> TrainingConfig {
        var t = TrainingConfig()
        t.seed = seed; t.epochs = epochsToTrain; t.batchSize = batchSize ?? 4; t.learningRate = adamLearningRate
        t.beta = beta; t.betaAnnealEpochs = betaAnneal; t.dataset = dataset; t.positiveLearningRateScale = positiveLRScale; t.volumeSize = volumeSize
        t.trainVolumes = trainVolumes; t.testVolumes = testVolumes; t.oodVolumes = testVolumes
        t.validationVolumes = max(2, testVolumes / 2); t.evaluationSamples = samples
        return t
    }

    func run() throws {
        let comm = try distribution.communicator(log: note)
        // Rank 0 speaks for the job.
        let say: (String) -> Void = comm.isRoot ? { note($0) } : { _ in }
        try endingJobOnError(comm) { try reportingInputErrors {
            let batchSize = self.batchSize ?? 4
            guard resume != nil || batchSize % comm.worldSize == 0 else {
                if comm.isRoot { _ = InputError("--batch-size \(batchSize) is the batch over all ranks and must be a multiple of the \(comm.worldSize) ranks; use e.g. --batch-size \(comm.worldSize * ((batchSize + comm.worldSize - 1) / comm.worldSize)).").exit }
                throw ExitCodes.usage
            }
            let registry = try plugins.registry()
            if folder.data != nil || (resume.map(FolderTraining.isUNetCheckpoint) ?? false) {
                guard comm.worldSize == 1 else { throw InputError("--data training runs in one process for now; launch it without mpirun.") }
                return try FolderTraining(command: self, registry: registry).run()
            }
            let trainer: Trainer
            if let resume {
                // Every rank checks the folder alike (so a refusal is the same on all); rank 0 speaks.
                let folder = GivenOptions.contains("--run") ? runFolder : (resume as NSString).deletingLastPathComponent
                RunFolder.removeStaleTemporaries(in: (resume as NSString).deletingLastPathComponent, log: say)
                if folder != (resume as NSString).deletingLastPathComponent { try RunFolder.prepare(folder, policy: .fresh, log: say) }
                trainer = try Trainer.resume(checkpoint: resume, registry: registry, runDirectory: folder, allowPluginChange: allowPluginChange,
                                             epochs: epochs, communicator: comm, log: say)
                say("resuming \(resume) after epoch \(trainer.epochsDone) of \(trainer.training.epochs)"
                    + (trainer.epochsDone >= trainer.training.epochs ? " (the run is complete; --epochs N with N > \(trainer.epochsDone) extends it)" : ""))
            } else {
                try RunFolder.prepare(runFolder, policy: overwrite ? .overwrite : .fresh, log: say)
                let t = trainingConfig()
                let config = try model.config()
                let net = try SegmentationNet(config, registry: registry, seed: seed, log: say)
                trainer = try Trainer(model: net, training: t, dataset: try t.makeDataset(), runDirectory: runFolder, communicator: comm, log: say)
            }
            trainer.showProgress = !quiet
            let start = Date()
            try trainer.run()
            let seconds = Date().timeIntervalSince(start)
            if trainer.stepsTimed > 0 {
                let perStep = trainer.stepSeconds / Double(trainer.stepsTimed)
                say(String(format: "throughput: %.3f steps/s (%.1f ms per step over %d steps after the first, data loading included)",
                           1 / perStep, perStep * 1e3, trainer.stepsTimed) +
                    (comm.worldSize > 1 ? "; " + trainer.parallel.reduceSummary(stepSeconds: perStep) : ""))
            }
            // The test and OOD evaluation runs on rank 0 alone; the others are done.
            guard comm.isRoot else { return }
            let report = try RunReport.evaluate(trainer: trainer, trainSeconds: seconds)
            print(report.text)
            say("run folder: \(trainer.runDirectory) (checkpoint.safetensors, metrics.csv, metrics.json, results.json)")
        } }
    }
}
