// How a run finds its communicator: single process, or MPI when launched by mpirun/srun; threads per rank.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `--distributed`: how a process decides whether it is one rank of many.
public enum DistributedMode: String, CaseIterable, Sendable {
    /// MPI when a launcher (mpirun, srun) announced a job in the environment, else one process.
    case auto
    /// One process; refused when a launcher announced more than one rank.
    case single
    /// MPI always (fails if the backend cannot be loaded).
    case mpi
}

public enum Launch {
    /// The number of ranks a launcher announced: Open MPI's mpirun (OMPI_COMM_WORLD_SIZE), a PMI
    /// launcher (PMI_SIZE), or Slurm's srun starting an MPI task (SLURM_NTASKS with PMIX_RANK or
    /// PMI_RANK). nil when the process was started directly.
    public static func announcedWorldSize(_ env: [String: String] = ProcessInfo.processInfo.environment) -> Int? {
        if let s = env["OMPI_COMM_WORLD_SIZE"].flatMap(Int.init) { return s }
        if let s = env["PMI_SIZE"].flatMap(Int.init) { return s }
        if env["PMIX_RANK"] != nil || env["PMI_RANK"] != nil, let s = env["SLURM_NTASKS"].flatMap(Int.init) { return s }
        return nil
    }

    /// The communicator for `mode`. Under MPI it also gives this rank its share of the node's
    /// cores (see `OpenMPThreads.share`), and the log names the transport.
    public static func communicator(_ mode: DistributedMode, backendPath: String? = nil,
                                    environment env: [String: String] = ProcessInfo.processInfo.environment,
                                    log: (String) -> Void = { _ in }) throws -> Communicator {
        let announced = announcedWorldSize(env)
        switch mode {
        case .single:
            if let n = announced, n > 1 {
                throw CommLoadError(message: "--distributed single, but the launcher started \(n) ranks: each would train alone and overwrite the others' run folder. Use --distributed auto (or mpi), or launch one process.")
            }
            return SingleProcess()
        case .auto where announced == nil:
            return SingleProcess()
        case .auto, .mpi:
            let comm = try MPICommunicator(backendPath: backendPath)
            let threads = OpenMPThreads.share(localSize: comm.localSize, environment: env)
            if comm.isRoot { log("distributed: \(comm.description); \(threads.description) per rank") }
            return comm
        }
    }
}

/// OpenMP threads per rank: every rank on a node would otherwise start one thread per core.
public enum OpenMPThreads {
    public struct Share: CustomStringConvertible {
        public let threads: Int
        public let reason: String
        public var description: String { "\(threads) OpenMP thread\(threads == 1 ? "" : "s") (\(reason))" }
    }

    /// Cores this process may run on: its affinity mask (which mpirun's binding narrows), from
    /// the Cpus_allowed line of /proc/self/status.
    static func allowedCores() -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") }) else { return nil }
        let hex = line.dropFirst("Cpus_allowed:".count).filter { $0.isHexDigit }
        return hex.reduce(0) { $0 + (Int(String($1), radix: 16) ?? 0).nonzeroBitCount }
    }

    /// The rule: OMP_NUM_THREADS if the user set it; else, if the launcher bound the rank to a
    /// subset of cores, all of those; else the node's cores divided by the ranks on the node.
    public static func threads(localSize: Int, allowedCores: Int, onlineCores: Int, environment env: [String: String]) -> Share {
        if let t = env["OMP_NUM_THREADS"], !t.isEmpty { return Share(threads: Int(t.split(separator: ",")[0]) ?? 1, reason: "OMP_NUM_THREADS") }
        if allowedCores < onlineCores { return Share(threads: max(1, allowedCores), reason: "the cores mpirun bound this rank to") }
        return Share(threads: max(1, onlineCores / max(1, localSize)), reason: "\(onlineCores) cores / \(localSize) ranks on this node")
    }

    /// Applies the rule through omp_set_num_threads (libgomp, loaded with oneDNN). Call before the
    /// first convolution.
    @discardableResult
    public static func share(localSize: Int, environment env: [String: String]) -> Share {
        let online = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let s = threads(localSize: localSize, allowedCores: allowedCores() ?? online, onlineCores: online, environment: env)
        guard env["OMP_NUM_THREADS"] == nil else { return s }
        guard let f = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "omp_set_num_threads") else {
            return Share(threads: s.threads, reason: s.reason + "; NOT applied: no OpenMP runtime in the process, set OMP_NUM_THREADS")
        }
        typealias SetThreads = @convention(c) (Int32) -> Void
        unsafeBitCast(f, to: SetThreads.self)(Int32(s.threads))
        return s
    }
}
