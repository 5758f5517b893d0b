/* plugin_isolation.h -- the C side of plugin isolation: the child's seccomp sandbox, spawning the
 * child with only its channel, shared memory, and the in-process crash guard.
 *
 * Swift calls these through the CPluginIsolation module; the typed wrappers are
 * Sources/Host/Flipout3D/Plugins/Isolation/*.swift. Everything here that runs inside a signal
 * handler is async-signal-safe (write(2), sigaction(2), raise(3)).
 */
#ifndef FLIPOUT_PLUGIN_ISOLATION_H
#define FLIPOUT_PLUGIN_ISOLATION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The line the child's SIGSYS handler writes to fd 2 before dying: "@@flipout-sandbox <nr>\n". */
#define FLIPOUT_SANDBOX_MARKER "@@flipout-sandbox "

/* Install the sandbox in the calling (child) process: seccomp-bpf through libseccomp, default
   allow, and SIGSYS (SCMP_ACT_TRAP) for: creating sockets; file-system writes (open/openat for
   writing, creating, truncating, renaming, linking, removing, chmod/chown, xattrs, mknod);
   new processes (fork, vfork, clone without CLONE_THREAD, execve); signalling or tracing other
   processes (kill/tgkill of another pid, ptrace, process_vm_*); io_uring, bpf, mount and friends.
   clone3 and openat2 answer ENOSYS (their flags sit behind a pointer the filter cannot read; glibc
   falls back to clone / openat). Also installs the SIGSYS handler that reports the refused call.
   Returns 0, or -errno with a message in `message` (capacity bytes). */
int flipout_sandbox_apply(char *message, size_t capacity);

/* The name of system call `nr` on this architecture (static storage, never NULL). */
const char *flipout_syscall_name(int nr);

/* Child hardening before anything else runs: no core dumps, not ptrace-attachable by other
   processes of the user (PR_SET_DUMPABLE 0), every fd >= first_unused closed. */
void flipout_child_harden(int first_unused);

/* Spawn `path` with `argv` and `envp` (both NULL-terminated), working folder "/", default signal
   dispositions and an empty signal mask, and exactly these descriptors: 0 = /dev/null (read),
   1 and 2 = output_fd, 3 = channel_fd, 4 = shm_fd; every other descriptor is closed.
   Returns 0 and the pid, or an errno value. */
int flipout_spawn_isolated(const char *path, char *const argv[], char *const envp[],
                           int channel_fd, int shm_fd, int output_fd, pid_t *pid);

/* pipe2(fds, O_CLOEXEC). */
int flipout_pipe_cloexec(int fds[2]);

/* memfd_create(name, MFD_CLOEXEC): a file that lives only in memory. -1 with errno on failure. */
int flipout_memfd(const char *name);

/* ---- The shared-memory channel of an isolated call -------------------------------------------
   Sequence words and sleep flags live in the memfd both processes map. Loads and stores are
   sequentially consistent, so "store my word, then load the peer's flag" on each side never lets
   both miss each other (a sleeper always gets its wake-up packet). */
uint32_t flipout_shared_load(const uint32_t *word);
void flipout_shared_store(uint32_t *word, uint32_t value);

/* Busy-waits (with the CPU's spin-wait hint) until *word == expected or `nanoseconds` pass;
   after `pause_nanoseconds` it yields the CPU between checks (sched_yield), so a waiter on a
   busy machine gives way to runnable work. Returns 1 if the word reached `expected`, else 0. */
int flipout_spin_until(const uint32_t *word, uint32_t expected, uint64_t nanoseconds, uint64_t pause_nanoseconds);

/* ---- In-process crash guard ------------------------------------------------------------------
   flipout_crash_guard_install() sets SA_ONSTACK handlers for SIGSEGV, SIGBUS, SIGILL, SIGFPE,
   SIGABRT, SIGTRAP and SIGSYS (and an alternate stack for the calling thread). While a thread is
   between enter and leave, a fatal signal first writes `line` (preformatted, NUL-terminated,
   owned by the caller for the process) and the signal's name to stderr, then the previous
   disposition takes over (the process dies as before). Outside a call the handler only chains. */
void flipout_crash_guard_install(void);
const char *flipout_crash_guard_enter(const char *line);
void flipout_crash_guard_leave(const char *previous);

#ifdef __cplusplus
}
#endif

#endif
