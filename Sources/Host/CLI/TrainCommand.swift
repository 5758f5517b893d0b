// `flipout train`: train a Bayesian segmentation network, then evaluate it on the test and OOD splits.
import ArgumentParser
import Foundation
import Flipout3D

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a Bayesian 3D segmentation U-Net (ELBO, Adam) on a dataset folder and evaluate it.",
        discussion: """
        With --data DIR (a dataset folder in the nnU-Net v2 / MSD layout, see
        `flipout datasets --help`) it trains a U-Net with C input channels and K
        classes on patches: every case cropped to its nonzero region, reoriented
        to RAS, resampled to the median spacing (coarser when the default patch
        would see less than a quarter of the median case, nnU-Net's 3d_lowres
        rule; or --spacing) and normalised per channel (MRI per image, CT with the dataset's statistics); a third of
        the patches centred on a random foreground voxel, the rest anywhere,
        each augmented on the fly as nnU-Net does (--augmentation default|none).
        Every epoch is --steps-per-epoch steps whatever the dataset size; Adam
        (--lr) with nnU-Net's polynomial decay lr * (1 - epoch/epochs)^0.9.
        The loss is softmax cross-entropy + soft Dice (MONAI's DiceCELoss,
        nnU-Net's DC_and_CE_loss) + beta * KL / (training voxels); the
        checkpoint records the preprocessing plan and the patch size, so
        `flipout predict` replays them. Validation (--fold k) and test cases
        (imagesTs with labelsTs) report Dice per class. After the last epoch,
        keeping each class's largest component is decided on the validation
        cases (or, with --fold all, on up to 16 training cases) and saved for
        predict. Folds are a property of
        the dataset: DIR/splits_final.json (nnU-Net's file) if present, else
        the same partition of its case ids for every seed and run.

        Without --data it trains on the embedded synthetic data, exported first
        into RUN/dataset as the folder `flipout datasets export-synthetic
        RUN/dataset --cases 32 --test-cases 8 --ood-cases 8` writes, through the
        same path.

        Every epoch writes metrics.csv, metrics.json and checkpoint.safetensors
        (atomically) in the run folder. --resume C continues the run of
        checkpoint C bit-exactly in C's folder (or, with --run DIR, in a new
        folder DIR that receives a copy of the run); --epochs N trains until
        epoch N (larger extends a finished run). A new run needs an empty (or
        missing) run folder, or --overwrite, which replaces the previous run's
        files only once the new run's options and data have been checked.

        Examples:
          flipout train --epochs 10
          flipout datasets export-synthetic data/synthetic && flipout train --data data/synthetic
          flipout train --data ~/Dataset001_BrainTumour --fold 0 --patch 64,64,64 --levels 4
          flipout train --data data/synthetic --deterministic --run runs/det
          flipout train --data data/synthetic --init-from runs/det/checkpoint.safetensors --moped-delta 0.1
          flipout train --data data/synthetic --bayesian-layers last:2
          flipout train --prior org.flipout3d.laplace --prior-param scale=0.1
          flipout train --plugin ./libMyPrior.so --prior org.example.myprior
          flipout train --foreign-prior './libdens.so:my_logpdf(x:d,loc:d=0,scale:d=1)->d@org.example.cauchy' --prior org.example.cauchy
          flipout train --posterior org.flipout3d.gaussian-mixture --posterior-hyper components=2
          flipout train --resume runs/default/checkpoint.safetensors --epochs 60
          flipout train --resume runs/default/checkpoint.safetensors --epochs 80 --run runs/longer
          OMP_NUM_THREADS=1 mpirun -np 2 --bind-to none flipout train --data data/synthetic --batch-size 4   (or scripts/train-mpi -np 2 ...)
        """)

    @OptionGroup var plugins: PluginOptions
    @OptionGroup var model: ModelOptions
    @OptionGroup var distribution: DistributedOptions

    @Option(help: "Epochs to train (default \(FolderTrainingDefaults.epochs)); with --resume: train until this epoch.") var epochs: Int?
    @Option(name: .customLong("batch-size"), help: "Patches per step, over all ranks when distributed (default 2, as nnU-Net).") var batchSize: Int?
    @Option(name: .customLong("lr"), help: "Adam learning rate (default \(FolderTrainingDefaults.learningRate)).") var learningRate: Float?
    @Option(name: .customLong("positive-lr-scale"), help: "Learning-rate multiplier of positive-support (e.g. Beta) posterior parameters, which are learned as logarithms (default \(PositiveWeightPolicy.learningRateScale)).") var positiveLRScale: Float?
    @Option(help: "Weight of the KL term in the ELBO.") var beta: Double = 1
    @Option(name: .customLong("beta-anneal"), help: "Anneal beta linearly from 0 over this many epochs (0: off).") var betaAnneal = 0
    @Option(help: "Seed of every random draw (init, patches, noise, signs); the folds do not depend on it.") var seed: UInt64 = 1
    @Option(help: "Monte Carlo samples per case at evaluation.") var samples = 8
    @Option(name: .customLong("run"), help: "Run folder for checkpoint and metrics (with --resume: continue into this folder).") var runFolder = "runs/default"
    @Option(help: "Continue the run saved in this checkpoint (with --epochs N: train until epoch N).") var resume: String?
    @Flag(help: "Replace the previous run's files in a non-empty run folder (after the new run's options and data are checked).") var overwrite = false
    @Flag(name: .customLong("allow-plugin-change"), help: "Resume even if a plugin's SHA-256 changed since the checkpoint.") var allowPluginChange = false
    @Flag(help: "No progress line.") var quiet = false

    @OptionGroup(title: "Dataset folder (--data)") var folder: FolderTrainingOptions

    func validate() throws {
        try OptionRanges.check(self)
        try validating { try trainingConfig().validate() }
        if resume != nil {
            // Options that set what the checkpoint already fixes cannot be honoured on resume.
            let fixed = GivenOptions.given(["--batch-size", "--lr", "--positive-lr-scale", "--beta", "--beta-anneal", "--seed", "--samples",
                                            "--overwrite", "--data"] + FolderTrainingOptions.longNames + ModelOptions.longNames)
            guard fixed.isEmpty else {
                throw ValidationError("--resume continues the run as its checkpoint stored it, so \(fixed.joined(separator: ", ")) cannot be changed; drop \(fixed.count == 1 ? "it" : "them"), or start a new run (--run DIR without --resume). --epochs, --run and the plugin options may be given.")
            }
        }
    }

    /// --epochs and --lr, or their defaults (FolderTrainingDefaults, measured on the synthetic folder).
    var epochsToTrain: Int { epochs ?? FolderTrainingDefaults.epochs }
    var adamLearningRate: Float { learningRate ?? FolderTrainingDefaults.learningRate }

    /// The training settings the options give (a resumed run takes them from its checkpoint).
    func trainingConfig() -> TrainingConfig {
        var t = TrainingConfig()
        t.seed = seed; t.epochs = epochsToTrain; t.batchSize = batchSize ?? 2; t.learningRate = adamLearningRate
        t.beta = beta; t.betaAnnealEpochs = betaAnneal; t.positiveLearningRateScale = positiveLRScale
        t.evaluationSamples = samples
        return t
    }

    func run() throws {
        let comm = try distribution.communicator(log: note)
        try endingJobOnError(comm) { try reportingInputErrors {
            let batchSize = self.batchSize ?? 2
            guard resume != nil || batchSize % comm.worldSize == 0 else {
                if comm.isRoot { _ = InputError("--batch-size \(batchSize) is the batch over all ranks and must be a multiple of the \(comm.worldSize) ranks; use e.g. --batch-size \(comm.worldSize * ((batchSize + comm.worldSize - 1) / comm.worldSize)).").exit }
                throw ExitCodes.usage
            }
            let registry = try plugins.registry()
            try FolderTraining(command: self, registry: registry, communicator: comm).run()
        } }
    }
}
