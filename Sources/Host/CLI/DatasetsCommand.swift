// `flipout datasets check|export-synthetic|export-colin27`: validate a dataset folder (nnU-Net v2 /
// MSD layout) and write the built-in data as such folders.
import ArgumentParser
import Foundation
import Flipout3D

struct DatasetsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "datasets",
        abstract: "Check a dataset folder, or write the built-in data as one.",
        discussion: """
        A dataset folder has the nnU-Net v2 / Medical Segmentation Decathlon
        layout, so existing datasets work unchanged:
          DIR/dataset.json      channel_names {"0": "T1", "1": "T2"},
                                labels {"background": 0, "tumour": 1},
                                numTraining, file_ending ".nii.gz"
          DIR/imagesTr/CASE_0000.nii.gz, CASE_0001.nii.gz   one file per channel
          DIR/labelsTr/CASE.nii.gz                          class indices 0..K-1
          DIR/imagesTs/                                     optional test cases
        Region-based datasets (BraTS) give regions as lists of label values,
        one sigmoid each, with regions_class_order:
          "labels": {"background": 0, "whole tumour": [1, 2, 3],
                     "tumour core": [2, 3], "enhancing tumour": [3]},
          "regions_class_order": [1, 2, 3]
        A label named "ignore" (the highest value) marks voxels left out of the
        loss and the evaluation.
        MSD's "training": [{"image": ..., "label": ...}] lists work too.

        Examples:
          flipout datasets check ~/data/Dataset001_BrainTumour
          flipout datasets export-synthetic runs/synthetic --cases 32 --test-cases 8
          flipout datasets export-colin27 runs/colin27
          flipout train --data runs/synthetic
        """,
        subcommands: [DatasetsCheck.self, DatasetsExportSynthetic.self, DatasetsExportColin27.self]
    )
}

/// Parses "1.5,1,1" as a (D, H, W) spacing in mm (three numbers; `OptionRanges.spacing` bounds them in `validate()`).
struct SpacingArgument: ExpressibleByArgument {
    let values: [Double]
    init?(argument: String) {
        let v = argument.split(separator: ",", omittingEmptySubsequences: false).map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard v.count == 3, v.allSatisfy({ $0 != nil }) else { return nil }
        values = v.map { $0! }
    }
}

struct DatasetsCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate a dataset folder and print its fingerprint; writes nothing.",
        discussion: """
        Reads every case (imagesTr, labelsTr, imagesTs) and checks it against
        dataset.json: each channel file present, every channel and the label on
        one voxel grid, label values among dataset.json's labels, 3D files only,
        each case once, numTraining right. The first problem is an error naming
        the file and what to do (exit code 64).

        Then prints the fingerprint (cases, channels, classes or regions with
        their voxel share, the ignore label's share, source orientations,
        spacing and shape statistics per axis, intensity statistics per
        channel), the test cases (imagesTs: orientations, spacing and shape
        statistics, how many have labelsTs, and a warning per test case whose
        spacing lies outside the training range) and the preprocessing plan training
        would use: every case reoriented to RAS, resampled to the median
        spacing (or --spacing) and normalised per channel (z-score over the
        nonzero voxels; CT channels clipped to the labelled voxels' 0.5-99.5
        percentiles, then z-scored, as nnU-Net). Spacings and shapes are in
        tensor order (D, H, W), which after reorientation is (S, A, R).

        Example:
          flipout datasets check ~/data/Dataset001_BrainTumour --spacing 1,1,1
        """
    )

    @Argument(help: ArgumentHelp("The dataset folder (holds dataset.json).", valueName: "dir"))
    var directory: String

    @Option(help: ArgumentHelp("Target spacing in mm along (D, H, W) = (S, A, R), e.g. 3,1,1, each from 0.001 to 100 (default: the dataset's median, coarsened until train's default patch covers a quarter of the median case).", valueName: "d,h,w"))
    var spacing: SpacingArgument?

    @Flag(help: "Print the plan as JSON (the form a checkpoint stores) after the fingerprint.")
    var json = false

    func validate() throws { try OptionRanges.check(self) }

    func run() throws {
        try reportingInputErrors {
            let folder = try DatasetFolder(directory)
            let progress = ProgressLine(total: folder.training.count + folder.test.count, label: "checking")
            let fingerprint = try DatasetFingerprint(folder: folder) { done, _, id in progress.update(done: done, id) }
            let planned = spacing == nil ? SpacingPlan.defaultSpacing(fingerprint) : nil
            let plan = try fingerprint.checkedPlan(spacing: spacing?.values ?? planned?.spacing)
            if let planned, planned.spacing != fingerprint.medianSpacing { print(SpacingPlan.describe(planned, median: fingerprint.medianSpacing)) }
            print(fingerprint.report(plan: plan))
            if json { print(plan.jsonString()) }
            print("OK: \(folder.root) is a valid dataset folder")
        }
    }
}

struct DatasetsExportSynthetic: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-synthetic",
        abstract: "Write the multi-class synthetic data (2 channels, 3 classes) as a dataset folder.",
        discussion: """
        Each case comes from the embedded generator (channels T1, T2; classes
        background, structureA, structureB, on a RAS grid) and is resampled
        onto its own grid with a real affine: a random axis order and flips
        (LPS, ASR, ...), one thicker slice axis (1.3-2.0 mm, the others 0.9-1.3
        mm). Test cases go to imagesTs/, their labels to labelsTs/. --ood-cases N
        adds N out-of-distribution cases in imagesOod/ (labels in labelsOod/):
        the same kind of anatomy with inverted contrast, noise 0.9 instead of
        0.35, finer texture and a stronger bias field (the built-in binary
        task's OOD look); training and `datasets check` ignore them.
        --regions writes a BraTS-like region-based dataset (nested regions,
        one sigmoid each); --ignore marks a quarter of every training label
        map "ignore" (left out of the loss). The folder
        is built beside DIR and renamed into place, so it appears whole or not
        at all; DIR must not exist or be empty.

        Examples:
          flipout datasets export-synthetic runs/synthetic --cases 32 --test-cases 8
          flipout datasets check runs/synthetic
          flipout datasets export-synthetic runs/syn --ood-cases 8
          flipout datasets export-synthetic runs/brats-like --regions --ignore
          flipout predict --input runs/syn/imagesOod --output preds-ood --checkpoint C
          flipout evaluate --predictions preds --labels runs/syn/labelsTs --ood-predictions preds-ood
        """
    )

    @Argument(help: ArgumentHelp("The folder to create.", valueName: "dir"))
    var directory: String

    @Option(help: "Training cases (imagesTr/labelsTr).")
    var cases: Int = 32

    @Option(help: "Test cases (imagesTs/labelsTs).")
    var testCases: Int = 8

    @Option(help: "Out-of-distribution cases (imagesOod/labelsOod: inverted contrast, more noise).")
    var oodCases: Int = 0

    @Option(help: "Seed of the generator (the same seed writes the same folder).")
    var seed: UInt64 = 1

    @Flag(help: "A BraTS-like region-based dataset: labels 1 edema, 2 core, 3 enhancing shell; regions whole tumour [1,2,3], tumour core [2,3], enhancing tumour [3], regions_class_order [1,2,3] (one sigmoid per region).")
    var regions = false

    @Flag(help: "Label the top quarter of every training case's slices \"ignore\" (the highest label value): left out of the loss, as sparse annotations are.")
    var ignore = false

    func validate() throws {
        guard cases >= 1 else { throw ValidationError("--cases must be at least 1, got \(cases)") }
        guard testCases >= 0 else { throw ValidationError("--test-cases must be 0 or more, got \(testCases)") }
        guard oodCases >= 0 else { throw ValidationError("--ood-cases must be 0 or more, got \(oodCases)") }
        try OptionRanges.check(self)
    }

    func run() throws {
        try reportingInputErrors {
            let progress = ProgressLine(total: cases + testCases + oodCases, label: "writing")
            try SyntheticExport.write(to: directory, trainingCount: cases, testCount: testCases, oodCount: oodCases, seed: seed,
                                      regions: regions, ignore: ignore) { done, _, id in
                progress.update(done: done, id)
            }
            print("wrote \(directory): \(cases) training and \(testCases) test cases"
                  + (oodCases > 0 ? ", \(oodCases) out-of-distribution cases in imagesOod/" : "") + "; next: flipout datasets check \(directory)")
        }
    }
}

struct DatasetsExportColin27: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-colin27",
        abstract: "Write Colin27 with AAL regions grouped into 4 classes as a one-case dataset folder.",
        discussion: """
        The Colin27 T1 (ch2.nii.gz, 181x217x181 at 1 mm) and the AAL atlas on
        its grid (aal.nii.gz), from Debian's mricron-data
        (apt-get install mricron-data). AAL's 116 regions are grouped into
        0 background, 1 cerebral_cortex, 2 deep_grey (caudate, putamen,
        pallidum, thalamus), 3 cerebellum (cerebellum and vermis).
        --hemispheres writes the left hemisphere (world x < 0) as the training
        case and the right one (x > 0) as a held-out test case, each a crop
        with its own affine.

        Example:
          flipout datasets export-colin27 runs/colin27 --hemispheres
          flipout train --data runs/colin27 --spacing 2,2,2
        """
    )

    @Argument(help: ArgumentHelp("The folder to create.", valueName: "dir"))
    var directory: String

    @Option(help: "The folder holding ch2.nii.gz and aal.nii.gz.")
    var templates: String = Colin27.defaultDirectory

    @Flag(help: "Two cases: the left hemisphere to train on (imagesTr), the right one held out (imagesTs, labelsTs).")
    var hemispheres = false

    func run() throws {
        try reportingInputErrors {
            try Colin27Export.write(to: directory, templates: templates, hemispheres: hemispheres)
            print("wrote \(directory): Colin27 T1 with 4 AAL classes\(hemispheres ? ", left hemisphere to train, right held out" : ""); next: flipout datasets check \(directory)")
        }
    }
}
