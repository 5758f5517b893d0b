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
    /// wake-ups and tells of the host's end.
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
                guard let op = WireOp(rawValue: try r.u32()) else { return 70 }
                let familyIndex = Int(try r.u32()), instanceID = try r.u64(), n = Int(try r.u64()), size = Int(try r.u64())
                spin = min(try r.u64(), 1_000_000_000)
                guard familyIndex < families.count, case let t = families[familyIndex].table else { return 70 }
                if size != shm.size { try shm.map(size) }
                errorBuffer[0] = 0
                let started = DispatchTime.now().uptimeNanoseconds
                var err = flipout_error(struct_size: UInt32(MemoryLayout<flipout_error>.size), capacity: 1024, message: errorBuffer)
                var extras = WireWriter()
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
                if op != .create && instance == nil { return 70 }
                var status: Int32 = 0
                switch op {
                case .create:
                    let count = Int(try r.u32())
                    guard count <= Int(HostLimits.parameters) else { return 70 }
                    let hypers = try (0..<count).map { _ in try r.f64() }
                    var made: OpaquePointer?
                    status = hypers.withUnsafeBufferPointer { t.create(families[familyIndex].descriptor, $0.baseAddress, &made, &err) }
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
                    let p = try r.arrays().map(input), nz = try r.array(), u = try r.array(), x = try r.array(), g = try r.array(), gp = try r.arrays().map(output)
                    let (normals, uniforms) = noise(instance)
                    status = ChildSplit.run(n: n, splittable: ChildSplit.perScalar(gp), err: &err) { o, k, e in
                        t.sample_vjp!(instance, k, ChildSplit.offset(p, o), pointer(nz).map { $0 + o * normals }, pointer(u).map { $0 + o * uniforms },
                                      pointer(x).map { $0 + o }, pointer(g).map { $0 + o }, ChildSplit.offset(gp, o), e) }
                case .center:
                    let p = try r.arrays().map(input), out = try r.array()
                    status = ChildSplit.run(n: n, splittable: true, err: &err) { o, k, e in
                        t.center!(instance, k, ChildSplit.offset(p, o), pointer(out).map { $0 + o }, e) }
                case .centerVJP:
                    let p = try r.arrays().map(input), g = try r.array(), gp = try r.arrays().map(output)
                    status = ChildSplit.run(n: n, splittable: ChildSplit.perScalar(gp), err: &err) { o, k, e in
                        t.center_vjp!(instance, k, ChildSplit.offset(p, o), pointer(g).map { $0 + o }, ChildSplit.offset(gp, o), e) }
                case .kl:
                    let q = try r.string(limit: Int(HostLimits.nameLength)), qp = try r.arrays().map(input), pp = try r.arrays().map(input), out = try r.array()
                    status = q.withCString { name in ChildSplit.run(n: n, splittable: true, err: &err) { o, k, e in
                        t.kl!(instance, k, name, ChildSplit.offset(qp, o), ChildSplit.offset(pp, o), pointer(out).map { $0 + o }, e) } }
                case .klVJP:
                    let q = try r.string(limit: Int(HostLimits.nameLength)), qp = try r.arrays().map(input), pp = try r.arrays().map(input)
                    let g = try r.array(), gq = try r.arrays().map(output), gp = try r.arrays().map(output)
                    status = q.withCString { name in ChildSplit.run(n: n, splittable: ChildSplit.perScalar(gq + gp), err: &err) { o, k, e in
                        t.kl_vjp!(instance, k, name, ChildSplit.offset(qp, o), ChildSplit.offset(pp, o), pointer(g).map { $0 + o },
                                  ChildSplit.offset(gq, o), ChildSplit.offset(gp, o), e) } }
                }
                errorBuffer[1023] = 0
                reply.i32(status)
                reply.u64(DispatchTime.now().uptimeNanoseconds &- started)
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
}
