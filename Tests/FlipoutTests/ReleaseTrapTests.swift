// Release builds trap on programmer errors: a tiny release executable hits a wrong shape (and an
// out-of-range index) and must die by the trap's signal instead of computing on garbage.
import Testing
import Foundation
import TestSupport

@Test(arguments: ["shape", "index"])
func releaseBuildTrapsOnProgrammerErrors(_ mode: String) throws {
    let p = Process()
    p.executableURL = BuildProducts.directory.appendingPathComponent("shape-trap")
    p.arguments = [mode]
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let printed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    _ = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    #expect(p.terminationReason == .uncaughtSignal, "\(mode): exited with status \(p.terminationStatus), printed \(printed)")
    // Swift's trap is ud2 on x86-64 (SIGILL) and brk on arm64 (SIGTRAP).
    #expect([SIGILL, SIGTRAP].contains(p.terminationStatus), "\(mode): signal \(p.terminationStatus)")
    #expect(!printed.contains("no trap"))
}
