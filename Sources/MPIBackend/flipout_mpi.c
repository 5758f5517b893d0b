/* flipout_mpi.c -- the Open MPI backend of flipout_comm.h: the C shim that names MPI_COMM_WORLD,
 * MPI_FLOAT, MPI_SUM for a host that cannot import them. Built by scripts/build-mpi-backend with
 * mpicc into libflipout-mpi.so; not a SwiftPM target, so `swift build` never needs <mpi.h>. */
#include "flipout_comm.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

static char version[MPI_MAX_LIBRARY_VERSION_STRING];

static const char *library_version(void) { return version; }

/* Status codes are MPI error classes (MPI_SUCCESS = 0); the host asks error_string for text. */
static int to_class(int code) {
    int cls = code;
    if (code != MPI_SUCCESS && MPI_Error_class(code, &cls) != MPI_SUCCESS) cls = code;
    return cls;
}

static MPI_Datatype mpi_type(flipout_comm_datatype type, size_t *width) {
    switch (type) {
    case FLIPOUT_COMM_FLOAT32: *width = 4; return MPI_FLOAT;
    case FLIPOUT_COMM_FLOAT64: *width = 8; return MPI_DOUBLE;
    case FLIPOUT_COMM_BYTE: *width = 1; return MPI_BYTE;
    }
    return MPI_DATATYPE_NULL;
}

static int comm_init(flipout_comm_world *world) {
    int initialized = 0, provided = 0, rc;
    MPI_Initialized(&initialized);
    if (!initialized) {
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return to_class(rc);
    }
    /* Errors come back as codes (funnelled into Swift errors by the host), not as an abort. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int len = 0;
    MPI_Get_library_version(version, &len);
    int rank = 0, size = 1, local_rank = 0, local_size = 1;
    if ((rc = MPI_Comm_rank(MPI_COMM_WORLD, &rank)) != MPI_SUCCESS) return to_class(rc);
    if ((rc = MPI_Comm_size(MPI_COMM_WORLD, &size)) != MPI_SUCCESS) return to_class(rc);
    /* The processes sharing this node's memory (and cores). */
    MPI_Comm node;
    if ((rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node)) != MPI_SUCCESS)
        return to_class(rc);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);
    world->rank = rank;
    world->size = size;
    world->local_rank = local_rank;
    world->local_size = local_size;
    return MPI_SUCCESS;
}

/* MPI counts are int: split larger buffers into INT_MAX-element chunks. */
static int comm_allreduce_sum(void *buf, size_t count, flipout_comm_datatype type) {
    size_t width = 0;
    MPI_Datatype t = mpi_type(type, &width);
    if (t == MPI_DATATYPE_NULL || type == FLIPOUT_COMM_BYTE) return MPI_ERR_TYPE;
    char *p = buf;
    while (count > 0) {
        int n = count > INT_MAX ? INT_MAX : (int)count;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, n, t, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return to_class(rc);
        p += (size_t)n * width;
        count -= (size_t)n;
    }
    return MPI_SUCCESS;
}

static int comm_broadcast(void *buf, size_t count, flipout_comm_datatype type, int32_t root) {
    size_t width = 0;
    MPI_Datatype t = mpi_type(type, &width);
    if (t == MPI_DATATYPE_NULL) return MPI_ERR_TYPE;
    char *p = buf;
    while (count > 0) {
        int n = count > INT_MAX ? INT_MAX : (int)count;
        int rc = MPI_Bcast(p, n, t, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return to_class(rc);
        p += (size_t)n * width;
        count -= (size_t)n;
    }
    return MPI_SUCCESS;
}

static int comm_barrier(void) { return to_class(MPI_Barrier(MPI_COMM_WORLD)); }

static double comm_wtime(void) { return MPI_Wtime(); }

static void comm_abort(int32_t code) { MPI_Abort(MPI_COMM_WORLD, code); }

static int comm_finalize(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    return finalized ? MPI_SUCCESS : to_class(MPI_Finalize());
}

static void comm_error_string(int status, char *buf, size_t len) {
    if (len == 0) return;
    char text[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(status, text, &n) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", status);
    snprintf(buf, len, "%s (MPI error class %d)", text, status);
}

static const flipout_comm_backend table = {
    .struct_size = sizeof(flipout_comm_backend),
    .abi_minor = FLIPOUT_COMM_ABI_MINOR,
    .library_version = library_version,
    .initialize = comm_init,
    .allreduce_sum = comm_allreduce_sum,
    .broadcast = comm_broadcast,
    .barrier = comm_barrier,
    .wtime = comm_wtime,
    .abort = comm_abort,
    .finalize = comm_finalize,
    .error_string = comm_error_string,
};

const flipout_comm_backend *flipout_comm_entry_v1(void) { return &table; }
