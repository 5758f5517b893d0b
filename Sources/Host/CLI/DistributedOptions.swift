// `--distributed` for `flipout train`: one process, or one rank of an mpirun/srun job.
import ArgumentParser
import Foundation
import Flipout3D

extension DistributedMode: ExpressibleByArgument {}

struct DistributedOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "auto: one rank of an MPI job when started by mpirun/srun, else one process; single; mpi. Launch R ranks with: OMP_NUM_THREADS=<cores/R> mpirun -np R --bind-to none flipout train ... (as root also set OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; scripts/train-mpi does all this). --batch-size is the global batch over all ranks.",
        valueName: DistributedMode.allCases.map(\.rawValue).joined(separator: "|")))
    var distributed: DistributedMode = .auto

    /// The communicator, or exit 64 with the reason (a missing backend is a setup problem the message explains).
    func communicator(log: (String) -> Void) throws -> Communicator {
        do { return try Launch.communicator(distributed, log: log) } catch let e as CommLoadError {
            throw InputError(e.message).exit
        }
    }
}

/// Runs a rank's work; in a job of several ranks an error on one rank ends them all (the others
/// would wait in the next collective forever) after printing it with the rank.
func endingJobOnError(_ communicator: Communicator, _ body: () throws -> Void) throws {
    guard communicator.worldSize > 1 else { return try body() }
    do { try body() } catch let code as ExitCode {
        // Exit codes come from checks every rank makes alike (bad input; rank 0 printed the
        // message): every rank leaves the job cleanly and exits with the code.
        try? communicator.barrier()
        try? communicator.finish()
        throw code
    } catch {
        FileHandle.standardError.write(Data("Error on rank \(communicator.rank) of \(communicator.worldSize): \(error)\n".utf8))
        communicator.abort(exitCode: 1)
    }
}
