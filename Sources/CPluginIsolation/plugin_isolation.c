/* plugin_isolation.c -- seccomp sandbox (libseccomp), isolated spawn, memfd and the crash guard. */
#define _GNU_SOURCE
#include "plugin_isolation.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- async-signal-safe writing -------------------------------------------------------------- */

static void say(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0) { if (w < 0 && errno == EINTR) continue; return; }
        s += w; n -= (size_t)w;
    }
}

static void say_number(long v) {
    char buf[24]; int i = 23; buf[i] = 0;
    int negative = v < 0; unsigned long u = negative ? (unsigned long)(-v) : (unsigned long)v;
    do { buf[--i] = (char)('0' + u % 10); u /= 10; } while (u && i > 1);
    if (negative) buf[--i] = '-';
    say(buf + i);
}

/* ---- the sandbox ---------------------------------------------------------------------------- */

static void on_sigsys(int sig, siginfo_t *info, void *context) {
    (void)context;
    say("\n" FLIPOUT_SANDBOX_MARKER);
    say_number(info ? info->si_syscall : -1);
    say("\n");
    signal(sig, SIG_DFL);
    raise(sig);
}

const char *flipout_syscall_name(int nr) {
    static char buffer[64];
    char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    if (!name) { snprintf(buffer, sizeof buffer, "system call %d", nr); return buffer; }
    snprintf(buffer, sizeof buffer, "%s", name);
    free(name);
    return buffer;
}

int flipout_sandbox_apply(char *message, size_t capacity) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSYS, &sa, NULL) != 0) {
        snprintf(message, capacity, "sigaction(SIGSYS) failed: %s", strerror(errno));
        return -errno;
    }
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) { snprintf(message, capacity, "seccomp_init failed"); return -ENOMEM; }
    int rc = 0;
    const uint32_t trap = SCMP_ACT_TRAP;
#define RULE(action, name, ...) \
    do { if (rc == 0) { rc = seccomp_rule_add(ctx, action, SCMP_SYS(name), __VA_ARGS__); \
         if (rc != 0) snprintf(message, capacity, "seccomp rule for %s: %s", #name, strerror(-rc)); } } while (0)
#define DENY(name) RULE(trap, name, 0)
    /* Network (and any other socket). The channel is a socketpair made by the host. */
    DENY(socket); DENY(socketpair); DENY(connect); DENY(bind); DENY(listen); DENY(accept); DENY(accept4);
    /* New processes and programs. */
    DENY(fork); DENY(vfork); DENY(execve); DENY(execveat);
    RULE(trap, clone, 1, SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0));
    RULE(SCMP_ACT_ERRNO(ENOSYS), clone3, 0);
    /* Other processes: signals, tracing, memory. */
    pid_t self = getpid();
    RULE(trap, kill, 1, SCMP_A0(SCMP_CMP_NE, (scmp_datum_t)self));
    RULE(trap, tgkill, 1, SCMP_A0(SCMP_CMP_NE, (scmp_datum_t)self));
    DENY(tkill); DENY(ptrace); DENY(process_vm_readv); DENY(process_vm_writev);
    DENY(pidfd_open); DENY(pidfd_send_signal); DENY(pidfd_getfd);
    /* File-system writes. open/openat are allowed read-only, without O_CREAT or O_TRUNC. */
    RULE(trap, open, 1, SCMP_A1(SCMP_CMP_MASKED_EQ, O_ACCMODE, O_WRONLY));
    RULE(trap, open, 1, SCMP_A1(SCMP_CMP_MASKED_EQ, O_ACCMODE, O_RDWR));
    RULE(trap, open, 1, SCMP_A1(SCMP_CMP_MASKED_EQ, O_CREAT, O_CREAT));
    RULE(trap, open, 1, SCMP_A1(SCMP_CMP_MASKED_EQ, O_TRUNC, O_TRUNC));
    RULE(trap, openat, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, O_ACCMODE, O_WRONLY));
    RULE(trap, openat, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, O_ACCMODE, O_RDWR));
    RULE(trap, openat, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, O_CREAT, O_CREAT));
    RULE(trap, openat, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, O_TRUNC, O_TRUNC));
    RULE(SCMP_ACT_ERRNO(ENOSYS), openat2, 0);
    DENY(creat); DENY(truncate); DENY(ftruncate); DENY(fallocate);
    DENY(rename); DENY(renameat); DENY(renameat2); DENY(unlink); DENY(unlinkat); DENY(rmdir);
    DENY(mkdir); DENY(mkdirat); DENY(link); DENY(linkat); DENY(symlink); DENY(symlinkat);
    DENY(mknod); DENY(mknodat); DENY(chmod); DENY(fchmod); DENY(fchmodat); DENY(chown); DENY(fchown);
    DENY(lchown); DENY(fchownat); DENY(utime); DENY(utimes); DENY(utimensat); DENY(futimesat);
    DENY(setxattr); DENY(lsetxattr); DENY(fsetxattr); DENY(removexattr); DENY(lremovexattr); DENY(fremovexattr);
    DENY(name_to_handle_at); DENY(open_by_handle_at);
    /* Kernel interfaces that bypass the rules above or change the machine. */
    DENY(io_uring_setup); DENY(io_uring_enter); DENY(io_uring_register); DENY(bpf); DENY(perf_event_open);
    DENY(userfaultfd); DENY(mount); DENY(umount2); DENY(pivot_root); DENY(chroot); DENY(unshare); DENY(setns);
    DENY(init_module); DENY(finit_module); DENY(delete_module); DENY(kexec_load); DENY(reboot);
    DENY(swapon); DENY(swapoff); DENY(acct); DENY(quotactl); DENY(keyctl); DENY(add_key); DENY(request_key);
    DENY(sethostname); DENY(setdomainname); DENY(settimeofday); DENY(clock_settime); DENY(adjtimex);
#undef DENY
#undef RULE
    if (rc == 0) {
        rc = seccomp_load(ctx);
        if (rc != 0) snprintf(message, capacity, "seccomp_load failed: %s (a kernel without seccomp-bpf? run with --isolate-plugins none to load plugins in-process)", strerror(-rc));
    }
    seccomp_release(ctx);
    return rc;
}

/* ---- the child --------------------------------------------------------------------------------- */

void flipout_child_harden(int first_unused) {
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    syscall(SYS_close_range, (unsigned)first_unused, ~0u, 0u);
}

int flipout_spawn_isolated(const char *path, char *const argv[], char *const envp[],
                           int channel_fd, int shm_fd, int output_fd, pid_t *pid) {
    /* Move the three descriptors above 4 first, so that no dup2 below is a no-op on a
       close-on-exec descriptor and none overwrites another before it is copied. */
    int ch = fcntl(channel_fd, F_DUPFD_CLOEXEC, 10), sh = fcntl(shm_fd, F_DUPFD_CLOEXEC, 10),
        out = fcntl(output_fd, F_DUPFD_CLOEXEC, 10);
    int rc = 0;
    if (ch < 0 || sh < 0 || out < 0) rc = errno;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    if (rc == 0) {
        posix_spawn_file_actions_init(&fa);
        posix_spawnattr_init(&attr);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, out, 1);
        posix_spawn_file_actions_adddup2(&fa, out, 2);
        posix_spawn_file_actions_adddup2(&fa, ch, 3);
        posix_spawn_file_actions_adddup2(&fa, sh, 4);
        posix_spawn_file_actions_addclosefrom_np(&fa, 5);
        posix_spawn_file_actions_addchdir_np(&fa, "/");
        sigset_t all, empty;
        sigfillset(&all); sigemptyset(&empty);
        posix_spawnattr_setsigdefault(&attr, &all);
        posix_spawnattr_setsigmask(&attr, &empty);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
        rc = posix_spawn(pid, path, &fa, &attr, argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
    }
    if (ch >= 0) close(ch);
    if (sh >= 0) close(sh);
    if (out >= 0) close(out);
    return rc;
}

int flipout_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int flipout_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

/* ---- the shared-memory channel -------------------------------------------------------------- */

uint32_t flipout_shared_load(const uint32_t *word) { return __atomic_load_n(word, __ATOMIC_SEQ_CST); }

void flipout_shared_store(uint32_t *word, uint32_t value) { __atomic_store_n(word, value, __ATOMIC_SEQ_CST); }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int flipout_spin_until(const uint32_t *word, uint32_t expected, uint64_t nanoseconds, uint64_t pause_nanoseconds) {
    if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == expected) return 1;
    if (nanoseconds == 0) return 0;
    uint64_t start = monotonic_ns();
    for (;;) {
        uint64_t elapsed = monotonic_ns() - start;
        int yielding = elapsed >= pause_nanoseconds;
        for (int i = 0; i < (yielding ? 1 : 64); i++) {
            if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == expected) return 1;
            if (yielding) sched_yield(); else cpu_relax();
        }
        if (elapsed >= nanoseconds) return __atomic_load_n(word, __ATOMIC_ACQUIRE) == expected;
    }
}

/* ---- in-process crash guard ---------------------------------------------------------------- */

static __thread const char *current_line;
static struct sigaction previous[65];
static const int guarded[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS};

static const char *signal_name(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV"; case SIGBUS: return "SIGBUS"; case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE"; case SIGABRT: return "SIGABRT"; case SIGTRAP: return "SIGTRAP";
    case SIGSYS: return "SIGSYS"; default: return "a signal";
    }
}

static void on_fatal(int sig, siginfo_t *info, void *context) {
    (void)info; (void)context;
    const char *line = current_line;
    if (line) {
        say(line);
        say(" (");
        say(signal_name(sig));
        say(")\n");
        current_line = NULL;
    }
    sigaction(sig, &previous[sig], NULL);
    raise(sig);
}

void flipout_crash_guard_install(void) {
    static int installed;
    if (__atomic_exchange_n(&installed, 1, __ATOMIC_SEQ_CST)) return;
    size_t size = 64 * 1024;
    void *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack != MAP_FAILED) {
        stack_t ss = {.ss_sp = stack, .ss_size = size, .ss_flags = 0};
        sigaltstack(&ss, NULL);
    }
    for (size_t i = 0; i < sizeof guarded / sizeof guarded[0]; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fatal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(guarded[i], &sa, &previous[guarded[i]]);
    }
}

const char *flipout_crash_guard_enter(const char *line) {
    const char *before = current_line;
    current_line = line;
    return before;
}

void flipout_crash_guard_leave(const char *previous_line) { current_line = previous_line; }
