// The child's side of an isolated plugin (`flipout-plugin-host`): sandbox, load, then forward each request to the ABI.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import PluginABI
import CPluginIsolation

/// The main loop of `flipout-plugin-host`. It starts with fds 0 (/dev/null), 1 and 2 (a pipe the
/// host relays), 3 (the channel) and 4 (the shared memory), in "/", with a clean environment.
/// It installs the seccomp sandbox BEFORE loading the library, so the entry point, static
/// constructors and every call run sandboxed; then loads and validates the library exactly as
/// the host does in-process, sends the description, and answers requests until the host closes
/// the channel.
public enum PluginHostChild {
    static let channel: Int32 = 3

    public static func run(_ arguments: [String]) -> Int32 {
        flipout_child_harden(5)
        PluginLibrary.installsCrashGuard = false
        guard arguments.count == 3, ["--plugin", "--foreign-prior"].contains(arguments[1]) else {
            fputs("flipout-plugin-host: the child process of an isolated plugin; flipout starts it (usage: flipout-plugin-host --plugin PATH | --foreign-prior SPEC).\n", stderr)
            return 64
        }
        do { try PluginSandbox.apply() } catch {
            refuse(.isolationFailed, "\(error)")
            return 1
        }
        let library: PluginLibrary
        do {
            library = arguments[1] == "--plugin" ? try PluginLibrary.load(arguments[2]) : try ForeignDensityFamily.load(arguments[2])
        } catch let e as PluginLoadError {
            refuse(e.kind, e.reason); return 0
        } catch {
            refuse(.invalidDescriptor, "\(error)"); return 0
        }
        let description = WireLibrary(name: library.name, abiMinor: library.abiMinor, families: library.families.map(describe))
        guard let json = try? WireFamily.encoder.encode(description) else { refuse(.invalidDescriptor, "its descriptors cannot be encoded"); return 0 }
        sendLarge([0] + Array(json))
        return serve(library.families)
    }

    static func describe(_ f: DistributionFamily) -> WireFamily {
        let t = f.table
        var functions: [String] = []
        if t.create != nil { functions.append("create") }
        if t.destroy != nil { functions.append("destroy") }
        if t.layout != nil { functions.append("layout") }
        if t.log_prob != nil { functions.append("log_prob") }
        if t.log_prob_vjp != nil { functions.append("log_prob_vjp") }
        if t.sample != nil { functions.append("sample") }
        if t.sample_vjp != nil { functions.append("sample_vjp") }
        if t.center != nil { functions.append("center") }
        if t.center_vjp != nil { functions.append("center_vjp") }
        if t.kl != nil { functions.append("kl") }
        if t.kl_vjp != nil { functions.append("kl_vjp") }
        return WireFamily(
            id: f.id, name: f.name, version: f.version, description: f.summary, capabilities: f.capabilities.rawValue,
            parameters: f.parameters.map { .init(name: $0.name, description: $0.description, transform: $0.transform.rawValue,
                                                 defaultValue: $0.defaultValue, initJitter: $0.initJitter,
                                                 countHyperparameter: $0.countHyperparameter, priorValue: $0.priorValue) },
            roles: f.parameters.map { $0.role.rawValue },
            hyperparameters: f.hyperparameters.map { .init(name: $0.name, description: $0.description, defaultValue: $0.defaultValue,
                                                           minimum: $0.minimum, maximum: $0.maximum, isInteger: $0.isInteger) },
            klFamilies: f.klFamilies, toolchain: f.toolchain, stdlib: f.stdlib, functions: functions)
    }

    static func refuse(_ kind: PluginLoadError.Kind, _ reason: String) {
        var w = WireWriter()
        w.string(kind.rawValue); w.string(reason)
        sendLarge([1] + w.bytes)
    }

    static func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(channel, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    static func sendLarge(_ bytes: [UInt8]) {
        var w = WireWriter(); w.u64(UInt64(bytes.count))
        let chunk = 32 * 1024
        send(w.bytes + bytes.prefix(chunk))
        var at = min(chunk, bytes.count)
        while at < bytes.count { send(Array(bytes[at..<min(at + chunk, bytes.count)])); at += chunk }
    }

    /// Answers requests until the host closes the channel (or dies). Requests and replies travel
    /// through the control block of the shared memory (`ChannelControl`); the socket only carries
    /// wake-ups and tells of the host's end. A batch request carries posted calls (`IsolatedPlugin.post`).
    static func serve(_ families: [DistributionFamily]) -> Int32 {
        guard let shm = try? SharedMemory(inherited: 4) else { return 70 }
        let control = shm.control
        // A plugin may hand out one instance pointer to several creates (a stateless family's static
        // instance): each create is paired with one destroy, so the id stays known until the last.
        var instances: [UInt64: (pointer: OpaquePointer, creates: Int)] = [:]
        var bell = [UInt8](repeating: 0, count: 64)
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: 1024)
        var sequence: UInt32 = 0   // the host numbers its requests from 1
        var spin: UInt64 = 0

        /// A non-finite gradient from finite inputs after a posted call (as `Distribution.checkGradients`
        /// checks it in-process): the output index (max for a sum cell) and the value.
        func gradientProblem(_ c: Request.Checked?) -> (index: UInt64, value: Float)? {
            guard let c else { return nil }
            let n = c.n
            let others = c.inputs + c.params
            func finite(_ a: WireArray, _ i: Int) -> Bool { a.isAbsent || shm.floats(at: a.offset)[a.stride == 0 ? 0 : i].isFinite }
            for o in c.outputs where !o.isAbsent {
                let out = shm.floats(at: o.offset)
                let count = o.stride == 0 ? (n > 0 ? 1 : 0) : n
                for j in 0..<count where !out[j].isFinite {
                    let scalars = o.stride == 0 ? 0..<n : j..<(j + 1)
                    guard scalars.allSatisfy({ i in others.allSatisfy { finite($0, i) } }) else { continue }
                    return (o.stride == 0 ? .max : UInt64(j), out[j])
                }
            }
            return nil
        }

        /// Runs one request's ABI call (its arguments follow its header in `r`); nil if the
        /// request breaks the protocol.
        func perform(_ call: inout Request, _ r: inout WireReader, _ extras: inout WireWriter) throws -> Int32? {
            let (op, n, instanceID) = (call.op, call.n, call.instance)
            guard call.family < families.count, case let t = families[call.family].table else { return nil }
            errorBuffer[0] = 0
            var err = flipout_error(struct_size: UInt32(MemoryLayout<flipout_error>.size), capacity: 1024, message: errorBuffer)
            func input(_ a: WireArray) -> flipout_in_array { flipout_in_array(data: a.isAbsent ? nil : UnsafePointer(shm.floats(at: a.offset)), stride: Int(a.stride)) }
            func output(_ a: WireArray) -> flipout_out_array { flipout_out_array(data: a.isAbsent ? nil : shm.floats(at: a.offset), stride: Int(a.stride)) }
            func pointer(_ a: WireArray) -> UnsafeMutablePointer<Float>? { a.isAbsent ? nil : shm.floats(at: a.offset) }
            let instance = instances[instanceID]?.pointer
            // Noise one scalar's sample consumes (the offsets of a split sample call).
            func noise(_ i: OpaquePointer?) -> (Int, Int) {
                var a: UInt32 = 0, b: UInt32 = 0
                t.layout(i, nil, &a, &b)
                return (Int(a), Int(b))
            }
            if op != .create && instance == nil { return nil }
            var status: Int32 = 0
            switch op {
            case .batch:
                return nil
            case .create:
                let count = Int(try r.u32())
                guard count <= Int(HostLimits.parameters) else { return nil }
                let hypers = try (0..<count).map { _ in try r.f64() }
                var made: OpaquePointer?
                status = hypers.withUnsafeBufferPointer { t.create(families[call.family].descriptor, $0.baseAddress, &made, &err) }
                let id = made.map { UInt64(UInt(bitPattern: Int(bitPattern: UnsafeRawPointer($0)))) } ?? 0
                if let made { instances[id] = (made, (instances[id]?.creates ?? 0) + 1) }
                extras.u64(id)
            case .destroy:
                t.destroy(instance)
                let left = instances[instanceID]!.creates - 1
                instances[instanceID] = left > 0 ? (instance!, left) : nil
            case .layout:
                var a: UInt32 = 0, b: UInt32 = 0, c: UInt32 = 0
                t.layout(instance, &a, &b, &c)
                extras.u32(a); extras.u32(b); extras.u32(c)
            case .logProb:
                let p = try r.arrays().map(input), x = try r.array(), out = try r.array()
                status = ChildSplit.run(n: n, splittable: true, err: &err) { o, k, e in
                    t.log_prob(instance, k, ChildSplit.offset(p, o), pointer(x).map { $0 + o }, pointer(out).map { $0 + o }, e) }
            case .logProbVJP:
                let p = try r.arrays().map(input), x = try r.array(), g = try r.array(), gx = try r.array(), gp = try r.arrays().map(output)
                status = ChildSplit.run(n: n, splittable: ChildSplit.perScalar(gp), err: &err) { o, k, e in
                    t.log_prob_vjp(instance, k, ChildSplit.offset(p, o), pointer(x).map { $0 + o }, pointer(g).map { $0 + o },
                                   pointer(gx).map { $0 + o }, ChildSplit.offset(gp, o), e) }
            case .sample:
                let p = try r.arrays().map(input), nz = try r.array(), u = try r.array(), x = try r.array()
                let (normals, uniforms) = noise(instance)
                status = ChildSplit.run(n: n, splittable: true, err: &err) { o, k, e in
                    t.sample!(instance, k, ChildSplit.offset(p, o), pointer(nz).map { $0 + o * normals }, pointer(u).map { $0 + o * uniforms },
                              pointer(x).map { $0 + o }, e) }
            case .sampleVJP:
                let pa = try r.arrays(), nz = try r.array(), u = try r.array(), x = try r.array(), g = try r.array(), gpa = try r.arrays()
                let (p, gp) = (pa.map(input), gpa.map(output))
                let (normals, uniforms) = noise(instance)
                call.checked = .init(n: n, inputs: [x, g], params: pa, outputs: gpa)
                status = ChildSplit.run(n: n, splittable: ChildSplit.perScalar(gp), err: &err) { o, k, e in
                    t.sample_vjp!(instance, k, ChildSplit.offset(p, o), pointer(nz).map { $0 + o * normals }, pointer(u).map { $0 + o * uniforms },
                                  pointer(x).map { $0 + o }, pointer(g).map { $0 + o }, ChildSplit.offset(gp, o), e) }
            case .center:
                let p = try r.arrays().map(input), out = try r.array()
                status = ChildSplit.run(n: n, splittable: true, err: &err) { o, k, e in
                    t.center!(instance, k, ChildSplit.offset(p, o), pointer(out).map { $0 + o }, e) }
            case .centerVJP:
                let pa = try r.arrays(), g = try r.array(), gpa = try r.arrays()
                let (p, gp) = (pa.map(input), gpa.map(output))
                call.checked = .init(n: n, inputs: [g], params: pa, outputs: gpa)
                status = ChildSplit.run(n: n, splittable: ChildSplit.perScalar(gp), err: &err) { o, k, e in
                    t.center_vjp!(instance, k, ChildSplit.offset(p, o), pointer(g).map { $0 + o }, ChildSplit.offset(gp, o), e) }
            case .kl:
                let q = try r.string(limit: Int(HostLimits.nameLength)), qp = try r.arrays().map(input), pp = try r.arrays().map(input), out = try r.array()
                status = q.withCString { name in ChildSplit.run(n: n, splittable: true, err: &err) { o, k, e in
                    t.kl!(instance, k, name, ChildSplit.offset(qp, o), ChildSplit.offset(pp, o), pointer(out).map { $0 + o }, e) } }
            case .klVJP:
                let q = try r.string(limit: Int(HostLimits.nameLength)), qpa = try r.arrays(), ppa = try r.arrays()
                let g = try r.array(), gqa = try r.arrays(), gpa = try r.arrays()
                let (qp, pp, gq, gp) = (qpa.map(input), ppa.map(input), gqa.map(output), gpa.map(output))
                call.checked = .init(n: n, inputs: [g], params: qpa + ppa, outputs: gqa + gpa)
                status = q.withCString { name in ChildSplit.run(n: n, splittable: ChildSplit.perScalar(gq + gp), err: &err) { o, k, e in
                    t.kl_vjp!(instance, k, name, ChildSplit.offset(qp, o), ChildSplit.offset(pp, o), pointer(g).map { $0 + o },
                              ChildSplit.offset(gq, o), ChildSplit.offset(gp, o), e) } }
            }
            return status
        }

        while true {
            // The next request: spin for the host's budget, then sleep until it rings (or closes);
            // woken, spin again (the host rings before it copies the arrays in, to overlap our wake-up).
            while flipout_spin_until(control.word(ChannelControl.requestSequence), sequence &+ 1, spin, ChannelTiming.pause) == 0 {
                control.store(ChannelControl.childSleeping, 1)
                if control.load(ChannelControl.requestSequence) == sequence &+ 1 { break }
                let got = bell.withUnsafeMutableBytes { recv(channel, $0.baseAddress, $0.count, 0) }
                if got < 0 && errno == EINTR { continue }
                if got <= 0 { return 0 }
                // Drop further wake-ups already queued: one is enough.
                while bell.withUnsafeMutableBytes({ recv(channel, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
                control.store(ChannelControl.childSleeping, 0)
            }
            control.store(ChannelControl.childSleeping, 0)
            let seen = DispatchTime.now().uptimeNanoseconds
            sequence &+= 1
            guard let request = control.read(at: ChannelControl.requestOffset, capacity: ChannelControl.requestCapacity, length: ChannelControl.requestLength) else { return 70 }
            var r = WireReader(request)
            var reply = WireWriter()
            do {
                var call = try Request(&r)
                spin = call.spin
                if call.size != shm.size { try shm.map(call.size) }
                var status: Int32 = 0
                var computed: UInt64 = 0
                var extras = WireWriter()
                if call.op == .batch {
                    // Posted calls, in order, stopping at the first failing status or non-finite gradient.
                    let count = Int(try r.u32())
                    guard count <= IsolatedPlugin.postedLimit else { return 70 }
                    var executed = 0
                    var problem: (index: UInt64, value: Float)?
                    while executed < count {
                        control.store(ChannelControl.batchIndex, UInt32(executed))
                        var sub = WireReader(Array(try r.take(Int(try r.u32()))))
                        var posted = try Request(&sub)
                        guard posted.op.canBeBatched else { return 70 }
                        let started = DispatchTime.now().uptimeNanoseconds
                        var ignored = WireWriter()
                        guard let s = try perform(&posted, &sub, &ignored) else { return 70 }
                        computed &+= DispatchTime.now().uptimeNanoseconds &- started
                        status = s
                        if status != 0 { break }
                        if let p = gradientProblem(posted.checked) { problem = p; break }
                        executed += 1
                    }
                    extras.u32(UInt32(executed)); extras.u32(problem == nil ? 0 : 1)
                    extras.u64(problem?.index ?? 0); extras.u32((problem?.value ?? 0).bitPattern)
                } else {
                    let started = DispatchTime.now().uptimeNanoseconds
                    guard let s = try perform(&call, &r, &extras) else { return 70 }
                    computed = DispatchTime.now().uptimeNanoseconds &- started
                    status = s
                }
                errorBuffer[1023] = 0
                reply.i32(status)
                reply.u64(computed)
                reply.u64(DispatchTime.now().uptimeNanoseconds &- seen)
                reply.string(status == 0 ? "" : String(cString: errorBuffer))
                reply.bytes += extras.bytes
            } catch {
                return 70
            }
            control.write(reply.bytes, at: ChannelControl.replyOffset, capacity: ChannelControl.replyCapacity, length: ChannelControl.replyLength)
            control.store(ChannelControl.replySequence, sequence)
            if control.load(ChannelControl.hostSleeping) != 0 { send([1]) }
        }
    }

    /// A request's header; for a posted gradient call, what the child checks after it.
    struct Request {
        struct Checked { let n: Int; let inputs: [WireArray]; let params: [WireArray]; let outputs: [WireArray] }
        let op: WireOp
        let family: Int
        let instance: UInt64
        let n: Int
        let size: Int
        let spin: UInt64
        var checked: Checked?

        init(_ r: inout WireReader) throws {
            guard let op = WireOp(rawValue: try r.u32()) else { throw WireReader.Truncated() }
            self.op = op
            family = Int(try r.u32()); instance = try r.u64(); n = Int(try r.u64()); size = Int(try r.u64())
            spin = min(try r.u64(), 1_000_000_000)
        }
    }
}
