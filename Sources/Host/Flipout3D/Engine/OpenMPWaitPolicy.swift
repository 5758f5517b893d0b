// OpenMP's wait policy: flipout runs oneDNN's OpenMP threads passive (asleep between parallel regions) unless told otherwise.
#if canImport(Glibc)
import Glibc
#endif

/// oneDNN runs on GNU OpenMP, whose threads by default spin after each parallel region before
/// sleeping. Between convolutions the step runs its own threaded passes (instance norm, Flipout's
/// kernel assembly and folding, plugin calls split over threads, the batch worker), and a spinning
/// OpenMP thread takes a core from them: `flipout bench --workloads U1` at 2 threads used 827 ms of
/// process CPU per Flipout step with the default policy against 95 ms passive (CPU clock, a loaded
/// Zen 4), and W4 ran 296-388 ms against 88-115 ms (scripts/bench, which sets passive for the same
/// reason). libgomp reads OMP_WAIT_POLICY once, when it loads, before any Swift code runs, so
/// flipout re-executes itself once with OMP_WAIT_POLICY=passive when neither it nor
/// GOMP_SPINCOUNT is set. Set either to choose otherwise (e.g. OMP_WAIT_POLICY=active).
public enum OpenMPWaitPolicy {
    public static let variable = "OMP_WAIT_POLICY"

    /// Re-executes the running program with OMP_WAIT_POLICY=passive unless the environment
    /// already chooses a policy. Returns only if it did not re-execute (the policy was chosen, or
    /// the exec failed: then spinning threads make flipout slower, never wrong).
    public static func reexecutePassiveUnlessChosen() {
        guard getenv(variable) == nil, getenv("GOMP_SPINCOUNT") == nil else { return }
        setenv(variable, "passive", 1)
        _ = execv("/proc/self/exe", CommandLine.unsafeArgv)
    }
}
