// FileIO: whole-file reads and atomic writes (temp file in the same folder, fsync, rename), errno turned into typed errors.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file-system failure, naming the file, what failed, and the system's reason.
public struct FileIOError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable { case missing, permission, read, write }
    public let kind: Kind
    public let path: String
    public let reason: String

    public var description: String {
        switch kind {
        case .missing: return "\(path): no such file (check the path)"
        case .permission: return "\(path): permission denied (\(reason))"
        case .read: return "\(path): cannot read: \(reason)"
        case .write: return "\(path): cannot write: \(reason) (is the folder writable and the disk not full?)"
        }
    }
}

public enum FileIO {
    /// The system's message for an errno value.
    static func message(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// Default bound of `read`: no file Flipout3D reads whole (checkpoint, NIfTI, JSON) is near it.
    public static let defaultReadLimit = 1 << 32

    /// Reads a whole regular file of at most `limit` bytes; throws `FileIOError` naming the file.
    /// A FIFO, a device such as /dev/zero, a folder, or a file growing past `limit` is refused
    /// without reading more than `limit + 1` bytes (and a FIFO is never waited on).
    public static func read(_ path: String, limit: Int = defaultReadLimit) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        if fd < 0 {
            let e = errno
            throw FileIOError(kind: e == ENOENT || e == ENOTDIR ? .missing : e == EACCES ? .permission : .read,
                              path: path, reason: message(e))
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 { throw FileIOError(kind: .read, path: path, reason: message(errno)) }
        switch st.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw FileIOError(kind: .read, path: path, reason: "is a directory")
        case S_IFIFO: throw FileIOError(kind: .read, path: path, reason: "is a FIFO (named pipe), not a regular file")
        default: throw FileIOError(kind: .read, path: path, reason: "is a device or socket, not a regular file")
        }
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
        guard st.st_size <= limit else { throw tooLarge(path, limit) }
        var bytes = [UInt8]()
        bytes.reserveCapacity(Int(st.st_size))
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw FileIOError(kind: .read, path: path, reason: message(errno))
            }
            if n == 0 { break }
            guard bytes.count + n <= limit else { throw tooLarge(path, limit) }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    static func tooLarge(_ path: String, _ limit: Int) -> FileIOError {
        FileIOError(kind: .read, path: path, reason: "the file is larger than the \(limit)-byte limit for this kind of file")
    }

    /// Whether a regular file exists at `path`.
    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    /// Writes `bytes` atomically: a temporary file in the same folder, fsync, rename over `path`,
    /// then fsync of the folder. On any failure the temporary file is removed and `path` is untouched.
    public static func writeAtomically(_ bytes: [UInt8], to path: String) throws {
        try writeAtomically(to: path) { fd, tmp in
            try bytes.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw FileIOError(kind: .write, path: path, reason: message(errno))
                    }
                    offset += n
                }
            }
        }
    }

    /// Atomic write where `produce` creates the temporary file's content itself (given an open
    /// descriptor and the temporary path, e.g. for libraries that write by path). The temporary file
    /// is fsynced and renamed over `path` after `produce` returns.
    public static func writeAtomically(to path: String, _ produce: (Int32, String) throws -> Void) throws {
        let folder = directory(of: path)
        var template = Array("\(folder)/.\(basename(of: path)).tmp-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        if fd < 0 {
            let e = errno
            throw FileIOError(kind: e == EACCES ? .permission : .write, path: path,
                              reason: "cannot create a temporary file in \(folder): \(message(e))")
        }
        let tmp = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        var renamed = false
        defer { if !renamed { unlink(tmp) } }
        do {
            defer { close(fd) }
            try produce(fd, tmp)
            // `produce` may have written via its own handle to `tmp`; syncing our descriptor
            // syncs the same inode.
            if fsync(fd) != 0 { throw FileIOError(kind: .write, path: path, reason: "fsync: \(message(errno))") }
            fchmod(fd, 0o644)
        }
        if rename(tmp, path) != 0 { throw FileIOError(kind: .write, path: path, reason: "rename: \(message(errno))") }
        renamed = true
        let dfd = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }

    static func directory(of path: String) -> String { Paths.parent(path) }

    static func basename(of path: String) -> String { Paths.lastComponent(path) }
}
