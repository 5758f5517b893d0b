// Refuses plugin files that someone else could have replaced: the ssh StrictModes rule, applied before dlopen.
#if canImport(Glibc)
import Glibc
#endif

/// Loading a shared library runs its code as you. So, like ssh's StrictModes for
/// `authorized_keys`, the file and every folder above it must be owned by you or root and must
/// not be writable by group or others; a folder with the sticky bit (such as /tmp) may be
/// world-writable, because nobody can rename or remove another user's entries in it.
/// The path must already be resolved (no symbolic links).
public enum PluginFileSecurity {
    public static func check(_ resolvedPath: String) throws {
        let me = getuid()
        var path = resolvedPath
        var isFile = true
        while true {
            var st = stat()
            guard stat(path, &st) == 0 else { return }  // a missing file is reported by the caller
            let what = isFile ? "the file" : "its folder \(path)"
            let mode = String(st.st_mode & 0o7777, radix: 8)
            if st.st_uid != me && st.st_uid != 0 {
                throw PluginLoadError(.insecurePermissions, file: resolvedPath, "refusing to load: \(what) belongs to user id \(st.st_uid), which is neither you (\(me)) nor root, so that user could replace the plugin's code. Copy the plugin into a folder you own, or `chown` it.")
            }
            let writableByOthers = st.st_mode & 0o022 != 0
            let sticky = st.st_mode & UInt32(S_ISVTX) != 0
            if writableByOthers && (isFile || !sticky) {
                let who = st.st_mode & 0o002 != 0 ? "any user" : "its group"
                throw PluginLoadError(.insecurePermissions, file: resolvedPath, "refusing to load: \(what) can be written by \(who) (mode \(mode)), so someone else could replace the plugin's code, and loading it would run that code as you (the rule ssh's StrictModes applies). Fix it with `chmod go-w \(path)`.")
            }
            if path == "/" { return }
            let parent = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "/"
            path = parent.isEmpty ? "/" : parent
            isFile = false
        }
    }
}
