/*
 * flipout_comm.h -- the ABI between the Flipout3D host and a communication backend, version 1.
 *
 * A backend is a shared library exporting one symbol, FLIPOUT_COMM_ENTRY_SYMBOL, that returns a
 * table of functions for data-parallel training: all-reduce (sum), broadcast, barrier, abort.
 * The one backend shipped is Sources/MPIBackend/flipout_mpi.c over Open MPI, built by
 * scripts/build-mpi-backend into libflipout-mpi.so. The host dlopens it only when a run is
 * launched by mpirun/srun, so neither the host nor its tests need MPI to build or run.
 *
 * Why a C backend behind a table and not Swift over <mpi.h>: Swift cannot import MPI_COMM_WORLD,
 * MPI_FLOAT or MPI_SUM (in Open MPI they are casts of addresses of global structs, macros Swift's
 * importer drops). The backend is the tiny C shim that names them; the host sees only this
 * header, which depends on nothing but <stddef.h> and <stdint.h>.
 *
 * VERSIONING: like the plugin ABI (flipout_plugin.h). The major version is in the entry symbol's
 * name; the table begins with struct_size and later minor versions only append functions. A host
 * refuses a table smaller than the minor-0 size.
 *
 * ERRORS: every fallible function returns a status: 0 is success, anything else is the
 * implementation's error code (for MPI, an MPI error class such as MPI_ERR_TRUNCATE), which
 * `error_string` turns into text. The host turns statuses into Swift errors in ONE place
 * (CommError.check). The backend sets MPI_ERRORS_RETURN on its communicator so errors come back
 * as codes instead of aborting the job; it never exits the process except in `abort`.
 *
 * THREADING: call every function from the thread that called `initialize` (MPI_THREAD_FUNNELED: the
 * ranks' OpenMP teams never call into the backend).
 *
 * OWNERSHIP: the backend owns the table and the strings it returns (valid until exit; the host
 * never dlcloses it). Buffers passed in belong to the host and are used only during the call.
 * Counts are element counts of size_t; the backend splits counts above INT_MAX.
 */
#ifndef FLIPOUT_COMM_H
#define FLIPOUT_COMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLIPOUT_COMM_ABI_MAJOR 1
#define FLIPOUT_COMM_ABI_MINOR 0
#define FLIPOUT_COMM_ENTRY_SYMBOL "flipout_comm_entry_v1"

/* Element types of the buffers (the backend maps them to MPI_FLOAT, MPI_DOUBLE, MPI_BYTE). */
typedef enum flipout_comm_datatype {
    FLIPOUT_COMM_FLOAT32 = 1,
    FLIPOUT_COMM_FLOAT64 = 2,
    FLIPOUT_COMM_BYTE = 3
} flipout_comm_datatype;

/* Who this process is, filled by `init`. */
typedef struct flipout_comm_world {
    uint32_t struct_size;   /* sizeof(flipout_comm_world) the host was compiled with */
    int32_t rank;           /* 0 ..< size */
    int32_t size;           /* number of processes in the job */
    int32_t local_rank;     /* 0 ..< local_size: rank among the processes on this node */
    int32_t local_size;     /* processes on this node (they share its cores) */
} flipout_comm_world;

typedef struct flipout_comm_backend {
    uint32_t struct_size;   /* sizeof(flipout_comm_backend) the backend was compiled with */
    uint32_t abi_minor;     /* FLIPOUT_COMM_ABI_MINOR the backend was compiled with */
    /* e.g. "Open MPI v4.1.4, package: Debian OpenMPI, ..."; valid after initialize. */
    const char *(*library_version)(void);

    /* Initialise (once per process; MPI_Init_thread with MPI_THREAD_FUNNELED) and fill *world. */
    int (*initialize)(flipout_comm_world *world);
    /* In place: buf[i] = sum over ranks of buf[i]; every rank gets the same result. */
    int (*allreduce_sum)(void *buf, size_t count, flipout_comm_datatype type);
    /* In place: every rank's buf becomes root's. */
    int (*broadcast)(void *buf, size_t count, flipout_comm_datatype type, int32_t root);
    /* Returns when every rank has called it. */
    int (*barrier)(void);
    /* Seconds on a monotonic clock (MPI_Wtime). */
    double (*wtime)(void);
    /* Ends the whole job with `code` (MPI_Abort): for an error on one rank that the others
       would otherwise wait for forever. Does not return. */
    void (*abort)(int32_t code);
    /* Finalise (once, at exit). */
    int (*finalize)(void);
    /* Writes a NUL-terminated message for `status` into buf (truncated to len). */
    void (*error_string)(int status, char *buf, size_t len);
} flipout_comm_backend;

/* The entry point: returns the table (never NULL). */
typedef const flipout_comm_backend *(*flipout_comm_entry_fn)(void);
const flipout_comm_backend *flipout_comm_entry_v1(void);

#ifdef __cplusplus
}
#endif
#endif
