// `flipout bench --workloads P1`: the prediction workload, printed as text or one JSON line.
import Foundation
import Flipout3D

extension BenchCommand {
    /// P1: `predict`'s sliding-window Monte Carlo inference (Bench/PredictionWorkload.swift).
    func runPrediction(_ w: PredictionWorkload, registry: PluginRegistry) throws {
        let r = try Workloads.prediction(w, registry: registry, repeats: repeats, warmup: warmup,
                                         progress: { line in if !json { note("bench: " + line) } })
        if json {
            let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
            print(String(decoding: try e.encode(r), as: UTF8.self))
        } else {
            print(r.workload.padding(toLength: 17, withPad: " ", startingAt: 0)
                  + String(format: "%10.1f ms (min %.1f)  %d windows x %d samples  %.1f window-samples/s  mean MI %.2e  peak RSS %.0f MiB",
                           r.medianMs, r.minMs, r.windows, r.samples, r.windowSamplesPerSecond, r.meanMutualInformation, r.peakRSSMiB))
        }
        fflush(stdout)
    }
}
