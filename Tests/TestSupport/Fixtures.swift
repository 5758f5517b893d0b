// Test fixtures on disk: the package root, temporary folders, C plugins compiled at test time, subprocesses.
import Foundation

public enum Fixtures {
    /// The package root, found from this file's path (Tests/TestSupport/Fixtures.swift).
    public static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Tests/Fixtures/<name>.
    public static func source(_ name: String) -> String {
        packageRoot.appendingPathComponent("Tests/Fixtures").appendingPathComponent(name).path
    }

    /// Sources/PluginABI: the header and module map a plugin builds against.
    public static var abiDirectory: String { packageRoot.appendingPathComponent("Sources/PluginABI").path }

    /// A fresh, empty temporary folder (left for inspection; the OS cleans /tmp).
    public static func temporaryDirectory(_ label: String = "flipout-test") throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("\(label)-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// Compile C `sources` into a shared library at `output` with `cc` against the ABI header
    /// in `header` (default: today's; tests of other minors pass another folder).
    /// Throws with cc's output if compilation fails.
    @discardableResult
    public static func compileC(_ sources: [String], output: URL, flags: [String] = [],
                                shared: Bool = true, header: String = abiDirectory) throws -> URL {
        var args = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-fPIC", "-I", header]
        if shared { args.append("-shared") } else { args.append("-c") }
        args += flags + sources + ["-o", output.path]
        if shared { args.append("-lm") }
        let r = try Subprocess.run("/usr/bin/env", ["cc"] + args)
        guard r.status == 0 else { throw FixtureError("cc \(args.joined(separator: " ")) failed (\(r.status)):\n\(r.stderr)\(r.stdout)") }
        return output
    }
}

public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Runs a program to completion and captures its output.
public enum Subprocess {
    public struct Result: Sendable {
        public let status: Int32
        public let stdout: String
        public let stderr: String
    }

    /// Run `executable` with `arguments` (stdout and stderr go through temporary files, so a
    /// chatty child can never block on a full pipe).
    public static func run(_ executable: String, _ arguments: [String], in directory: URL? = nil,
                           environment: [String: String]? = nil) throws -> Result {
        let dir = try Fixtures.temporaryDirectory("flipout-proc")
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("stdout"), err = dir.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        if let directory { p.currentDirectoryURL = directory }
        if let environment { p.environment = environment }
        let outHandle = try FileHandle(forWritingTo: out), errHandle = try FileHandle(forWritingTo: err)
        p.standardOutput = outHandle
        p.standardError = errHandle
        p.standardInput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        try? outHandle.close(); try? errHandle.close()
        return Result(status: p.terminationStatus,
                      stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
    }
}

/// Runs the built `flipout` binary.
public enum FlipoutCLI {
    /// The environment without FLIPOUT_PLUGIN_PATH, so only the bundled and --plugin plugins load.
    public static var hermeticEnvironment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["FLIPOUT_PLUGIN_PATH"] = nil
        return env
    }

    public static func run(_ arguments: [String], in directory: URL? = nil) throws -> Subprocess.Result {
        try Subprocess.run(BuildProducts.flipout, arguments, in: directory, environment: hermeticEnvironment)
    }
}
