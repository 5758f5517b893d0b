// Where the built products (plugins, the flipout binary) are, seen from the test runner.
import Foundation

public enum BuildProducts {
    /// The build folder that holds the test runner, the `flipout` binary and the plugin `.so` files.
    public static let directory: URL = {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        // The runner may sit inside `<Package>PackageTests.xctest/...`; walk up to the build folder.
        while dir.path != "/" && !FileManager.default.fileExists(atPath: dir.appendingPathComponent("flipout").path) {
            if dir.lastPathComponent.hasSuffix(".xctest") || dir.path.contains(".xctest/") {
                dir = dir.deletingLastPathComponent()
            } else { break }
        }
        return dir
    }()

    public static func plugin(_ target: String) -> String { directory.appendingPathComponent("lib\(target).so").path }
    public static var flipout: String { directory.appendingPathComponent("flipout").path }
}
