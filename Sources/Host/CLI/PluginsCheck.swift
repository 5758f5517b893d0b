// `flipout plugins check PATH|ID`: the conformance suite, each check in a child process with a timeout.
import ArgumentParser
import Foundation
import Flipout3D

struct PluginsCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Run the conformance suite on a plugin (gradients, sampling, KL, ABI promises).",
        discussion: """
        Checks every family of a plugin file (or one family, by id) the way the
        host will use it, each check in a child process with a timeout, so a
        trap, a crash or a hang is a line of the report ("crashed (SIGSEGV) in
        log_prob_vjp at loc=0, scale=0.001"), not a dead flipout:

          log_prob          finite over a grid of parameters, extremes included
          log_prob_vjp      d/dx and d/dparameter against central finite
          sample_vjp,       differences in Double over that grid
          center_vjp, kl_vjp
          add-not-overwrite VJPs add into outputs prefilled with sentinels
          null-gradients    NULL gradient outputs are never written
          broadcast         stride-0 parameters equal the expanded form
          n=0               every function with n = 0 touches no buffer
          domain-errors     invalid parameters give DOMAIN_ERROR, not NaN with OK
          extremes          denormal, huge, ±inf and NaN parameters, x, noise and
                            upstream gradients through every function: no NaN
                            or infinity with status OK; ordinary parameters
                            sample for every noise value the host draws
          sample            20000 draws against exp(log_prob): mean, variance and
                            a Kolmogorov-Smirnov distance
          center            the center is the mean
          symmetry          a symmetric perturbation really is (two-sample KS)
          noise             sample reads only the noise layout() declares
                            (buffers end at guard pages)
          kl                analytic KL against Monte Carlo, KL >= 0, KL(q||q) = 0
          threads           concurrent calls from 4 threads agree with one

        Checks a family's capabilities do not call for are "not applicable".
        Exits 0 when every check passes, 1 when any fails.

        Examples:
          flipout plugins check ./libMyPrior.so
          flipout plugins check org.flipout3d.normal
          flipout plugins check ./libMyPrior.so --json > report.json
        """
    )

    @Argument(help: ArgumentHelp("A plugin file (./libMyPrior.so) or a family id (org.flipout3d.normal).", valueName: "path-or-id"))
    var target: String

    @OptionGroup var plugins: PluginOptions

    @Flag(help: "Print the report as JSON instead of a table.")
    var json = false

    @Option(help: ArgumentHelp("Seconds one check may run before it counts as hung.", valueName: "seconds"))
    var timeout: Double = 60

    func validate() throws {
        if target.isEmpty { throw ValidationError("Give a plugin path or a family id, e.g. org.flipout3d.normal.") }
        guard timeout > 0, timeout <= 3600 else { throw ValidationError("--timeout must be in (0, 3600] seconds (got \(timeout)).") }
    }

    func run() throws {
        var worker = [PluginSearch.executablePath, "plugins", "check-worker", target]
        for p in plugins.paths { worker += ["--plugin", p] }
        for f in plugins.foreignPriors { worker += ["--foreign-prior", f] }
        if plugins.noBundled { worker.append("--no-bundled") }
        let quiet = json
        let runner = ConformanceRunner(worker: worker, timeout: timeout) { line in
            if !quiet { FileHandle.standardError.write(Data("flipout: \(line)\n".utf8)) }
        }
        let report = runner.run(target: target)
        if let usage = report.usageError {
            // An unknown id or a malformed --foreign-prior: the worker's message, exit 64.
            FileHandle.standardError.write(Data("\(usage.hasPrefix("Error: ") ? usage : "Error: " + usage)\n".utf8))
            throw ExitCodes.usage
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.table(), terminator: "")
        }
        if !report.passed { throw ExitCodes.pluginFailure }
    }
}

/// The child process of `plugins check` (not for direct use): loads the target and runs checks,
/// writing one protocol line per step to stdout.
struct PluginsCheckWorker: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-worker", abstract: "Internal: the child process of `plugins check`.", shouldDisplay: false)

    @Argument var target: String
    @OptionGroup var plugins: PluginOptions
    @Flag var list = false
    @Option var family: String?
    @Option var from = 0

    func run() throws { try reportingInputErrors(work) }

    private func work() throws {
        // The worker is the plugin's process: it runs the plugin in-process, under the sandbox
        // isolated plugins get (docs/plugin-isolation.md), installed before anything is loaded.
        try PluginSandbox.apply()
        let families: [DistributionFamily]
        let partner: (String) -> DistributionFamily?
        if target.contains("/") || target.hasSuffix(".so") {
            // The file alone; posterior families for its KL checks come from it, then the bundled ones.
            let library = try PluginLibrary.load(target)
            families = library.families
            let others = try? plugins.registry(forcing: PluginIsolation.none)
            partner = { id in library.families.first { $0.id == id } ?? others?.families.first { $0.id == id } }
        } else {
            let registry = try plugins.registry(forcing: PluginIsolation.none)
            families = [try registry.family(target)]
            partner = { id in registry.families.first { $0.id == id } }
        }
        if list { ConformanceWorker.list(families); return }
        guard let id = family, let f = families.first(where: { $0.id == id }) else { throw ValidationError("no family \(family ?? "-") in \(target)") }
        ConformanceWorker.run(f, from: from, partner: partner)
    }
}
