// The host's side of one out-of-process plugin library: the child, its channel, the watchdog, and failures as errors.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CPluginIsolation
import PluginABI

/// How a plugin's child process failed. Once failed, every later call fails the same way.
public indirect enum PluginProcessFailure: Sendable, Equatable, CustomStringConvertible {
    /// The process had already failed in an earlier call (of this function, family and point).
    case earlier(function: String, family: String, point: String, PluginProcessFailure)
    case signal(Int32, refusedSyscall: String?)
    case exited(Int32)
    case timeout(Double)
    case channel(String)

    public var description: String {
        switch self {
        case .earlier(let function, let family, let point, let first):
            return "the plugin's process had already stopped in an earlier call, family \(family), function \(function)\(point.isEmpty ? "" : " " + point): \(first)"
        case .signal(_, let syscall?):
            return "the sandbox refused the system call \(syscall) (\(Self.refusal(syscall))) and stopped the plugin's process. Isolated plugins may not write files, use the network or start processes; compute from the buffers you are given"
        case .signal(let s, nil):
            return "the plugin's process was killed by \(Self.signalName(s)) (a crash inside the plugin)"
        case .exited(let code):
            return "the plugin's process exited with status \(code) in the middle of the call (a plugin must return a status, never call exit)"
        case .timeout(let t):
            return "no answer within \(IsolatedPlugin.format(t)) s, so the watchdog killed the plugin's process (a hang? raise the limit with --plugin-timeout or \(IsolationSettings.timeoutVariable))"
        case .channel(let why):
            return "the plugin's process broke the host protocol (\(why))"
        }
    }

    static func refusal(_ syscall: String) -> String {
        switch syscall {
        case "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4": return "network access"
        case "fork", "vfork", "clone", "execve", "execveat": return "starting a process"
        case "open", "openat", "creat", "truncate", "ftruncate", "fallocate", "rename", "renameat", "renameat2", "unlink", "unlinkat",
             "rmdir", "mkdir", "mkdirat", "link", "linkat", "symlink", "symlinkat", "mknod", "mknodat", "chmod", "fchmod", "fchmodat",
             "chown", "fchown", "lchown", "fchownat", "utime", "utimes", "utimensat", "futimesat":
            return "a file-system write: \(syscall == "open" || syscall == "openat" ? "opening a file for writing" : syscall)"
        case "kill", "tgkill", "tkill", "ptrace", "process_vm_readv", "process_vm_writev": return "reaching another process"
        default: return "a forbidden kernel interface"
        }
    }

    public static func signalName(_ s: Int32) -> String {
        switch s {
        case SIGSEGV: return "SIGSEGV"
        case SIGILL: return "SIGILL (a trap)"
        case SIGTRAP: return "SIGTRAP"
        case SIGABRT: return "SIGABRT (abort)"
        case SIGBUS: return "SIGBUS"
        case SIGFPE: return "SIGFPE"
        case SIGKILL: return "SIGKILL"
        case SIGSYS: return "SIGSYS"
        default: return "signal \(s)"
        }
    }
}

/// One plugin library loaded in a child process (`flipout-plugin-host`). Calls are serialised
/// (one request in flight); training makes one call per layer and function, never concurrently.
public final class IsolatedPlugin: @unchecked Sendable {
    /// The library file (resolved), named in every message.
    public let file: String
    public let timeout: Double
    private let pid: pid_t
    /// The child's process id (for diagnostics and tests).
    public var processID: Int32 { pid }
    private let channel: Int32
    private let output: Int32
    private let shm: SharedMemory
    private let lock = NSLock()
    private var failed: PluginProcessFailure?
    private var pendingOutput: [UInt8] = []
    private var outputTail: [String] = []
    private var refusedSyscall: Int32?
    /// The sequence number of the last request (the child answers with the same number).
    private var sequence: UInt32 = 0

    /// The child executable: beside the running flipout binary.
    public static var hostExecutable: String { Paths.join(PluginSearch.executableDirectory, "flipout-plugin-host") }

    /// Whether this process started any plugin's child (the stats count only then).
    static var anyStarted = false

    static func format(_ t: Double) -> String { t == t.rounded() ? String(Int(t)) : String(format: "%.1f", t) }

    /// Starts the child for `file` (a plugin, or with `foreignSpec` a --foreign-prior's library),
    /// waits for it to load the library inside its sandbox, and returns it with the description
    /// of what it loaded. A load error in the child is rethrown as the same PluginLoadError.
    static func start(file: String, foreignSpec: String?, timeout: Double) throws -> (IsolatedPlugin, WireLibrary) {
        let exe = hostExecutable
        guard access(exe, X_OK) == 0 else {
            throw PluginLoadError(.isolationFailed, file: file, "cannot run it isolated: \(exe) is missing (it is built with flipout: `swift build` builds every product). Or load plugins in-process with --isolate-plugins none.")
        }
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw PluginLoadError(.isolationFailed, file: file, "cannot run it isolated: socketpair failed: \(String(cString: strerror(errno))).")
        }
        var pipeFDs: [Int32] = [0, 0]
        guard flipout_pipe_cloexec(&pipeFDs) == 0 else {
            close(pair[0]); close(pair[1])
            throw PluginLoadError(.isolationFailed, file: file, "cannot run it isolated: pipe failed: \(String(cString: strerror(errno))).")
        }
        let shm: SharedMemory
        do { shm = try SharedMemory(); try shm.ensure(1 << 20) } catch {
            close(pair[0]); close(pair[1]); close(pipeFDs[0]); close(pipeFDs[1])
            throw PluginLoadError(.isolationFailed, file: file, "cannot run it isolated: \(error).")
        }
        let argv = [exe] + (foreignSpec.map { ["--foreign-prior", $0] } ?? ["--plugin", file])
        // A clean environment; FLIPOUT_DEBUG passes on so that plugins' debug log lines still show,
        // and the host's thread count, which the child splits its calls over.
        let env = PluginSandbox.childEnvironment + [PluginSandbox.childThreads]
            + (getenv("FLIPOUT_DEBUG") != nil ? ["FLIPOUT_DEBUG=1"] : [])
        let cargs = argv.map { strdup($0) } + [nil]
        let cenv = env.map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) }; for e in cenv { free(e) } }
        var pid: pid_t = 0
        let rc = flipout_spawn_isolated(exe, cargs, cenv, pair[1], shm.fd, pipeFDs[1], &pid)
        close(pair[1]); close(pipeFDs[1])
        guard rc == 0 else {
            close(pair[0]); close(pipeFDs[0])
            throw PluginLoadError(.isolationFailed, file: file, "cannot start \(exe): \(String(cString: strerror(rc))).")
        }
        _ = fcntl(pipeFDs[0], F_SETFL, fcntl(pipeFDs[0], F_GETFL) | O_NONBLOCK)
        let plugin = IsolatedPlugin(file: file, timeout: timeout, pid: pid, channel: pair[0], output: pipeFDs[0], shm: shm)
        anyStarted = true
        if IsolationStats.enabled { IsolationStats.childStarted(pid) }
        // The hello: 0 + JSON of the library, or 1 + kind + reason of a load error.
        let reply: [UInt8]
        do { reply = try plugin.lock.withLock { try plugin.receiveLarge(deadline: Date().addingTimeInterval(timeout)) } } catch let f as PluginProcessFailure {
            throw PluginLoadError(.isolationFailed, file: file, "while loading it (the entry point \(FLIPOUT_ENTRY_SYMBOL), before any family exists): \(f)\(plugin.context)")
        }
        guard let kind = reply.first else { throw PluginLoadError(.isolationFailed, file: file, "its process sent an empty hello") }
        let body = Array(reply.dropFirst())
        if kind == 1 {
            var r = WireReader(body)
            let k = (try? r.string()).flatMap(PluginLoadError.Kind.init(rawValue:)) ?? .entryFailed
            let reason = (try? r.string()) ?? "(unreadable reason)"
            throw PluginLoadError(k, file: file, PluginString.escaped(reason))
        }
        guard kind == 0, let library = try? WireFamily.decoder.decode(WireLibrary.self, from: Data(body)) else {
            throw PluginLoadError(.isolationFailed, file: file, "its process sent a hello the host cannot read")
        }
        return (plugin, library)
    }

    private init(file: String, timeout: Double, pid: pid_t, channel: Int32, output: Int32, shm: SharedMemory) {
        self.file = file; self.timeout = timeout; self.pid = pid; self.channel = channel; self.output = output; self.shm = shm
    }

    deinit {
        // Closing the channel ends the child (its recv returns 0); reap it if it is already gone.
        close(channel); close(output)
        kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, WNOHANG)
    }

    /// The last lines the child printed (a Swift "Fatal error: ..." names the cause), for messages.
    var context: String {
        let lines = outputTail.filter { !$0.isEmpty }.suffix(3)
        return lines.isEmpty ? "" : ". It printed: " + lines.joined(separator: " | ")
    }

    // MARK: Calls

    /// A reply: the plugin's status and message, and what the operation returns.
    struct Reply {
        var status: Int32
        var message: String
        var reader: WireReader
    }

    /// Sends `op` with the arrays `frame` lays out (copied in before, copied back after an OK
    /// status) and the op's scalar `arguments`, and waits for the reply within the watchdog.
    /// Throws `PluginProcessFailure` if the child dies, hangs or breaks the protocol. With posted
    /// calls pending, the call's arrays go after theirs; if it touches a posted call's gradient
    /// (or destroys an instance), the posted calls are collected first (`flushPosted`).
    func call(_ op: WireOp, family: UInt32, instance: UInt64, n: Int, frame: CallFrame = CallFrame(),
              arguments: (inout WireWriter) -> Void = { _ in }) throws -> Reply {
        lock.lock(); defer { lock.unlock() }
        if let failed { throw failed }
        if !posted.isEmpty && (op == .destroy || frame.entries.contains(where: { e in postedUpdates.contains { $0.hostRange.overlaps(e.hostRange) } })) {
            try flushLocked()
        }
        let delta = postedEnd - ChannelControl.arraysOffset
        do {
            return try exchange(op, family: family, instance: instance, n: n, frame: delta == 0 ? frame : frame.shifted(by: delta),
                                relocate: delta == 0 ? nil : { WireArray(offset: $0.offset + UInt64(delta), stride: $0.stride) }, arguments: arguments)
        } catch let f as PluginProcessFailure {
            failed = f
            throw f
        }
    }

    /// Records where the process failed (family id and parameter point, which only the caller
    /// knows), so that later calls name that call instead of their own.
    func noteFailure(function: String, family: String, point: String) {
        lock.withLock { noteFailureLocked(function: function, family: family, point: point) }
    }

    private func noteFailureLocked(function: String, family: String, point: String) {
        if let f = failed, case .earlier = f {} else if let f = failed {
            failed = .earlier(function: function, family: family, point: point, f)
        }
    }

    // MARK: Posted calls

    /// What a failure message of a posted call needs: the family, and the call's inputs as they
    /// lie in the shared memory (the host's buffers may be gone when the batch runs).
    struct PostedContext {
        let family: String
        let file: String
        let n: Int
        /// Parameter slot names and arrays (relocated into the shared memory), for the point.
        let groups: [(names: [String], arrays: [WireArray])]
        let x: WireArray?
    }

    private struct Posted {
        let op: WireOp
        let request: [UInt8]
        let context: PostedContext
    }

    private var posted: [Posted] = []
    /// The end of the posted calls' arrays in the shared memory.
    private var postedEnd = ChannelControl.arraysOffset
    /// The arrays posted calls write: gradients they ADD into, each once in the shared memory
    /// (copied in when first posted, back when collected: calls into the same gradient accumulate
    /// in the child in posting order, as they would in-process), and outputs (copied back).
    private var postedUpdates: [CallFrame.Entry] = []
    /// Posted calls in one batch at most.
    static let postedLimit = 512
    /// Bytes of the posted calls' requests (each with its length), and of a request's header.
    private var postedBytes = 0
    static let requestHeader = 40 + 4

    var hasPosted: Bool { lock.withLock { !posted.isEmpty } }

    /// Whether a posted call, not yet collected, adds into memory in `range`.
    func postedWrites(_ ranges: [Range<UInt>]) -> Bool {
        lock.withLock { postedUpdates.contains { u in ranges.contains { $0.overlaps(u.hostRange) } } }
    }

    /// Queues `op` without waiting for it: its inputs are copied into the shared memory now, the
    /// arrays it writes are copied back when the posted calls are collected (`flushPosted`, or before a call that touches them). The plugin's
    /// status, a non-finite gradient from finite inputs (checked in the child after each call, as
    /// `Distribution.checkGradients` does in-process) and a dying child surface there, naming
    /// this call through `context`.
    func post(_ op: WireOp, family: UInt32, instance: UInt64, n: Int, frame: CallFrame, context: (WireWriter.Relocation) -> PostedContext,
              arguments: (inout WireWriter) -> Void) throws {
        precondition(op.canBeBatched, "\(op.function) cannot be posted")
        lock.lock(); defer { lock.unlock() }
        if let failed { throw failed }
        // An input that a posted call writes, or a gradient that overlaps one without being the
        // same array, needs the posted calls' results first.
        let conflict = frame.entries.contains { e in postedUpdates.contains { u in
            u.hostRange.overlaps(e.hostRange) && !(e.direction == .update && u.host == e.host && u.hostStride == e.hostStride && u.count == e.count)
        } }
        // The batch's request must fit the channel's request area (its size does not depend on
        // where the arrays lie): a full batch is collected first.
        var measure = WireWriter()
        arguments(&measure)
        let requestSize = Self.requestHeader + measure.bytes.count + 4
        if conflict || posted.count >= Self.postedLimit || postedBytes + requestSize > ChannelControl.requestCapacity - Self.requestHeader {
            try flushLocked()
        }
        precondition(requestSize <= ChannelControl.requestCapacity - Self.requestHeader, "a posted \(op.function) request of \(requestSize) bytes exceeds the channel")
        var moved: [Int: Int] = [:]
        var fresh: [CallFrame.Entry] = []
        var cursor = postedEnd
        for e in frame.entries {
            if e.direction == .update, let u = postedUpdates.first(where: { $0.host == e.host && $0.hostStride == e.hostStride && $0.count == e.count }) {
                moved[e.offset] = u.offset
                continue
            }
            var placed = e
            placed.offset = cursor
            cursor += e.footprint
            moved[e.offset] = placed.offset
            fresh.append(placed)
        }
        do { try shm.ensure(cursor) } catch let e as SharedMemoryError {
            failed = .channel("shared memory: \(e)")
            throw failed!
        }
        let t0 = IsolationStats.enabled ? DispatchTime.now().uptimeNanoseconds : 0
        for e in fresh where e.direction != .output { e.copyIn(shm) }
        postedUpdates += fresh.filter { $0.direction != .input }
        postedEnd = cursor
        let relocate: WireWriter.Relocation = { a in WireArray(offset: UInt64(moved[Int(a.offset)]!), stride: a.stride) }
        var w = WireWriter()
        w.relocate = relocate
        w.u32(op.rawValue); w.u32(family); w.u64(instance); w.u64(UInt64(n)); w.u64(0)
        w.u64(ChannelTiming.childSpin)
        arguments(&w)
        posted.append(Posted(op: op, request: w.bytes, context: context(relocate)))
        postedBytes += 4 + w.bytes.count
        if IsolationStats.enabled {
            IsolationStats.recordPosted(op: op, copyIn: DispatchTime.now().uptimeNanoseconds - t0,
                                        bytes: fresh.reduce(0) { $0 + ($1.direction == .output ? 0 : $1.count * MemoryLayout<Float>.size) })
        }
        PostedPluginCalls.register(self)
    }

    /// Runs every posted call in one round trip (in posting order, stopping at the first
    /// failure), copies what they wrote back, and throws the first failure: the `PluginCallError`
    /// its call would have thrown in-process (a dead child: status processFailed), for a posted
    /// gradient call inside `PostedPluginCalls.failure`.
    func flushPosted() throws {
        lock.lock(); defer { lock.unlock() }
        try flushLocked()
    }

    private func flushLocked() throws {
        guard !posted.isEmpty else { return }
        let calls = posted, updates = postedUpdates
        posted = []; postedUpdates = []; postedEnd = ChannelControl.arraysOffset; postedBytes = 0
        PostedPluginCalls.unregister(self)
        if let failed { throw failed }
        var w = WireWriter()
        w.u32(WireOp.batch.rawValue); w.u32(0); w.u64(0); w.u64(0); w.u64(UInt64(shm.size))
        w.u64(ChannelTiming.childSpin)
        w.u32(UInt32(calls.count))
        for c in calls { w.u32(UInt32(c.request.count)); w.bytes += c.request }
        shm.control.store(ChannelControl.batchIndex, 0)
        let reply: Reply
        do {
            reply = try exchange(.batch, request: w.bytes, frame: CallFrame(), batchCalls: calls.count)
        } catch let f as PluginProcessFailure {
            failed = f
            let k = min(Int(shm.control.load(ChannelControl.batchIndex)), calls.count - 1)
            let c = calls[k]
            let at = point(c.context, at: nil)
            noteFailureLocked(function: c.op.function, family: c.context.family, point: at)
            throw reported(c.op, PluginCallError(family: c.context.family, function: c.op.function, status: PluginCallError.processFailed,
                                                 message: "\(f)\(context)", file: c.context.file, point: at))
        }
        var r = reply.reader
        do {
            let executed = Int(try r.u32())
            let nonFinite = try r.u32() != 0
            let index = try r.u64()
            let value = Float(bitPattern: try r.u32())
            if reply.status == 0 && !nonFinite && executed == calls.count {
                let t0 = IsolationStats.enabled ? DispatchTime.now().uptimeNanoseconds : 0
                for u in updates { u.copyOut(shm) }
                if IsolationStats.enabled {
                    IsolationStats.recordCollected(copyOut: DispatchTime.now().uptimeNanoseconds - t0,
                                                   bytes: updates.reduce(0) { $0 + $1.count * MemoryLayout<Float>.size })
                }
                return
            }
            guard executed < calls.count else { throw WireReader.Truncated() }
            let c = calls[executed]
            if nonFinite {
                throw reported(c.op, PluginCallError(family: c.context.family, function: c.op.function, status: PluginCallError.nonFinite,
                                                     message: "returned status OK with a gradient of \(value) from finite inputs. Check the plugin's derivative.",
                                                     file: c.context.file, point: point(c.context, at: index == .max ? nil : Int(index))))
            }
            throw reported(c.op, PluginCallError(family: c.context.family, function: c.op.function, status: reply.status,
                                                 message: reply.message.isEmpty ? "(no message)" : reply.message, file: c.context.file,
                                                 point: reply.status == Status.unsupported.rawValue ? "" : point(c.context, at: nil)))
        } catch is WireReader.Truncated {
            kill(pid, SIGKILL)
            failed = .channel("a truncated reply to posted calls")
            throw failed!
        }
    }

    /// A batched call's failure: a posted gradient call's as `PostedPluginCalls.failure`; center
    /// and sample, which their own layer sends and collects at once, as their PluginCallError.
    private func reported(_ op: WireOp, _ e: PluginCallError) -> Error {
        op.canBePosted ? PostedPluginCalls.failure(e) : e
    }

    /// The parameter point of a posted call, from its inputs in the shared memory.
    private func point(_ c: PostedContext, at index: Int?) -> String {
        let groups = c.groups.map { g in (names: g.names, arrays: g.arrays.map { InArray(UnsafePointer(shm.floats(at: $0.offset)), stride: Int($0.stride)) }) }
        return Distribution.point(groups, x: c.x.map { UnsafePointer(shm.floats(at: $0.offset)) }, n: c.n, at: index)
    }

    // MARK: The exchange

    private func exchange(_ op: WireOp, family: UInt32, instance: UInt64, n: Int, frame: CallFrame, relocate: WireWriter.Relocation?,
                          arguments: (inout WireWriter) -> Void) throws -> Reply {
        var w = WireWriter()
        w.relocate = relocate
        w.u32(op.rawValue); w.u32(family); w.u64(instance); w.u64(UInt64(n))
        // The size the arrays need (the header's size field is filled in below, once mapped).
        let sizeAt = w.bytes.count
        w.u64(0)
        w.u64(ChannelTiming.childSpin)
        arguments(&w)
        do { try shm.ensure(frame.size) } catch let e as SharedMemoryError { throw PluginProcessFailure.channel("shared memory: \(e)") }
        withUnsafeBytes(of: UInt64(shm.size).littleEndian) { w.bytes.replaceSubrange(sizeAt..<(sizeAt + 8), with: $0) }
        return try exchange(op, request: w.bytes, frame: frame, batchCalls: 0)
    }

    /// One round trip: copies `frame`'s arrays in, sends `request`, waits for the reply (the
    /// watchdog restarts at each call of a batch), copies the arrays back after an OK status.
    private func exchange(_ op: WireOp, request: [UInt8], frame: CallFrame, batchCalls: Int) throws -> Reply {
        do {
            let t0 = IsolationStats.enabled ? DispatchTime.now().uptimeNanoseconds : 0
            // A sleeping child takes tens of microseconds to wake: ring now, so that it wakes
            // while the arrays are copied in (it spins for the request once awake).
            if shm.control.load(ChannelControl.childSleeping) != 0 {
                if IsolationStats.enabled { IsolationStats.count(\.rings) }
                try ring()
            }
            try shm.ensure(frame.size)
            frame.copyIn(shm)
            let t1 = IsolationStats.enabled ? DispatchTime.now().uptimeNanoseconds : 0
            let control = shm.control
            control.write(request, at: ChannelControl.requestOffset, capacity: ChannelControl.requestCapacity, length: ChannelControl.requestLength)
            sequence &+= 1
            control.store(ChannelControl.requestSequence, sequence)
            if control.load(ChannelControl.childSleeping) != 0 {
                if IsolationStats.enabled { IsolationStats.count(\.lateRings) }
                try ring()
            }
            try awaitReply(control, batch: batchCalls > 0)
            guard let bytes = control.read(at: ChannelControl.replyOffset, capacity: ChannelControl.replyCapacity, length: ChannelControl.replyLength) else {
                kill(pid, SIGKILL)
                throw PluginProcessFailure.channel("a reply longer than the channel")
            }
            var r = WireReader(bytes)
            let status = try r.i32()
            let computed = try r.u64()
            let served = try r.u64()
            let message = try r.string(limit: 4096)
            let t2 = IsolationStats.enabled ? DispatchTime.now().uptimeNanoseconds : 0
            if status == 0 { frame.copyOut(shm) }
            if IsolationStats.enabled {
                let t3 = DispatchTime.now().uptimeNanoseconds
                IsolationStats.record(op: op, copyIn: t1 - t0, wait: t2 - t1, copyOut: t3 - t2, compute: computed, served: served, frame: frame)
            }
            return Reply(status: status, message: PluginString.escaped(message), reader: r)
        } catch is WireReader.Truncated {
            kill(pid, SIGKILL)
            throw PluginProcessFailure.channel("a truncated reply")
        } catch let e as SharedMemoryError {
            throw PluginProcessFailure.channel("shared memory: \(e)")
        }
    }

    /// Wakes a child that sleeps on the channel (one byte; stale wake-ups are harmless).
    private func ring() throws {
        var bell: UInt8 = 1
        let sent = Glibc.send(channel, &bell, 1, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
        if sent != 1 && !(sent < 0 && (errno == EAGAIN || errno == EINTR)) { throw ended() }
    }

    /// Waits for the reply to request `sequence`: first spinning on its sequence word (a call
    /// takes tens of microseconds; a wake-up through the kernel costs as much), then asleep in
    /// poll on the channel, which the child rings if it finds this side asleep, and which reports
    /// the child's death; the watchdog kills it at `deadline`. Relays what the child prints.
    private func awaitReply(_ control: ChannelControl, batch: Bool) throws {
        defer { drainOutput() }
        var deadline = Date().addingTimeInterval(timeout)
        var running = control.load(ChannelControl.batchIndex)
        if flipout_spin_until(control.word(ChannelControl.replySequence), sequence, ChannelTiming.hostSpin, ChannelTiming.pause) != 0 { return }
        var bell = [UInt8](repeating: 0, count: 64)
        if IsolationStats.enabled { IsolationStats.count(\.sleeps) }
        while true {
            control.store(ChannelControl.hostSleeping, 1)
            if control.load(ChannelControl.replySequence) == sequence { control.store(ChannelControl.hostSleeping, 0); return }
            if batch, case let now = control.load(ChannelControl.batchIndex), now != running {
                // The next call of the batch started: its own watchdog period begins.
                running = now
                deadline = Date().addingTimeInterval(timeout)
            }
            let events = try pollChannel(deadline: deadline)
            if events & Int16(POLLIN) != 0 {
                let got = bell.withUnsafeMutableBytes { recv(channel, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN) { throw ended() }
            } else if events & Int16(POLLHUP | POLLERR) != 0 {
                throw ended()
            }
        }
    }

    /// The channel's poll events within a second (never past `deadline`), relaying what the child
    /// prints meanwhile. Past the deadline the child is killed: the call timed out.
    private func pollChannel(deadline: Date) throws -> Int16 {
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 {
                kill(pid, SIGKILL)
                reap()
                throw PluginProcessFailure.timeout(timeout)
            }
            var fds = [pollfd(fd: channel, events: Int16(POLLIN), revents: 0), pollfd(fd: output, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, Int32(min(left, 1) * 1000) + 1)
            if ready < 0 { if errno == EINTR { continue }; throw PluginProcessFailure.channel("poll: \(String(cString: strerror(errno)))") }
            if fds[1].revents != 0 { drainOutput() }
            return fds[0].revents
        }
    }

    /// `context` of the failure, for the message of the call that saw it.
    func failureContext() -> String { lock.withLock { context } }

    /// One packet from the child within `deadline`, relaying what it prints meanwhile.
    private func receive(deadline: Date) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let events = try pollChannel(deadline: deadline)
            if events & Int16(POLLIN) != 0 {
                let got = buffer.withUnsafeMutableBytes { recv(channel, $0.baseAddress, $0.count, 0) }
                if got > 0 { return Array(buffer[0..<got]) }
                if got < 0 && errno == EINTR { continue }
                throw ended()
            }
            if events & Int16(POLLHUP | POLLERR) != 0 { throw ended() }
        }
    }

    /// A message the child split into packets: [u64 total] + data, then data.
    private func receiveLarge(deadline: Date) throws -> [UInt8] {
        var r = WireReader(try receive(deadline: deadline))
        let total = Int(try r.u64())
        guard total <= 64 << 20 else { throw PluginProcessFailure.channel("a hello of \(total) bytes") }
        var out = Array(r.bytes[r.at...])
        while out.count < total { out += try receive(deadline: deadline) }
        return out
    }

    /// The child is gone: wait for it and say how it ended.
    private func ended() -> PluginProcessFailure {
        let status = reap()
        drainOutput(final: true)
        if let status {
            if status & 0x7f == 0 { return .exited((status >> 8) & 0xff) }
            let sig = status & 0x7f
            return .signal(sig, refusedSyscall: sig == SIGSYS ? refusedSyscall.map { String(cString: flipout_syscall_name($0)) } ?? "(unknown)" : nil)
        }
        return .channel("the channel closed but the process is still running")
    }

    @discardableResult
    private func reap() -> Int32? {
        var status: Int32 = 0
        for attempt in 0..<200 {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return status }
            if r < 0 && errno != EINTR { return nil }
            if attempt == 100 { kill(pid, SIGKILL) }
            usleep(10_000)
        }
        return nil
    }

    /// Reads what the child printed; relays it to stderr (escaped, prefixed with the file) and keeps the tail.
    private func drainOutput(final: Bool = false) {
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let got = buffer.withUnsafeMutableBytes { read(output, $0.baseAddress, $0.count) }
            if got > 0 { pendingOutput += buffer[0..<got]; continue }
            if got < 0 && errno == EINTR { continue }
            break
        }
        while let nl = pendingOutput.firstIndex(of: 0x0a) {
            line(String(decoding: pendingOutput[..<nl], as: UTF8.self))
            pendingOutput.removeSubrange(...nl)
        }
        if final && !pendingOutput.isEmpty { line(String(decoding: pendingOutput, as: UTF8.self)); pendingOutput = [] }
    }

    private func line(_ text: String) {
        if text.hasPrefix(FLIPOUT_SANDBOX_MARKER) {
            refusedSyscall = Int32(text.dropFirst(FLIPOUT_SANDBOX_MARKER.count).trimmingCharacters(in: .whitespaces))
            return
        }
        guard !text.isEmpty else { return }
        let shown = PluginString.escaped(String(text.prefix(2000)))
        outputTail.append(shown)
        if outputTail.count > 10 { outputTail.removeFirst() }
        // The child's own log lines already start with "flipout: plugin ..."; other output is labelled.
        FileHandle.standardError.write(Data((shown.hasPrefix("flipout: ") ? shown : "flipout: plugin \(Paths.lastComponent(file)) printed: \(shown)").utf8 + [0x0a]))
    }
}

extension PluginProcessFailure: Error {}
