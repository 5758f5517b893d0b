// The table of host services handed to every plugin's entry point (the logger).
import PluginABI
import FlipoutABI
#if canImport(Glibc)
import Glibc
#endif

/// The `flipout_host` every plugin receives: one process-wide instance that lives forever.
enum HostServices {
    nonisolated(unsafe) static let table: UnsafePointer<flipout_host> = {
        let t = UnsafeMutablePointer<flipout_host>.allocate(capacity: 1)
        t.initialize(to: flipout_host(
            struct_size: UInt32(MemoryLayout<flipout_host>.size),
            abi_major: UInt32(FLIPOUT_ABI_MAJOR), abi_minor: UInt32(FLIPOUT_ABI_MINOR),
            host_name: UnsafePointer(strdup("flipout \(Flipout3DVersion.string)")),
            host_context: nil,
            log: { _, level, message in
                guard let message else { return }
                let tag = ["debug", "info", "warning", "error"][Int(max(0, min(3, level)))]
                if level == LogLevel.debug.rawValue && getenv("FLIPOUT_DEBUG") == nil { return }
                // A plugin's text never reaches the terminal raw (no escape codes).
                let text = PluginString.escaped(String(decoding: UnsafeRawBufferPointer(start: message, count: strnlen(message, 4096)), as: UTF8.self))
                fputs("flipout: plugin \(tag): \(text)\n", stderr)
            }))
        return UnsafePointer(t)
    }()
}

public enum Flipout3DVersion {
    public static let string = "0.1.0"
}
