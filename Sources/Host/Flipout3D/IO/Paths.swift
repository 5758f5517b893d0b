// Path strings split and joined in plain Swift (no NSString/URL: Foundation's path getters trap on some short strings).
//
// Every place in Sources/Host that needs a path's folder, its last component or a joined path
// calls these. The rules are POSIX dirname/basename's, with "." for a bare name's folder:
//   parent("a") == ".", parent("/a") == "/", parent("a/b/") == "a", parent("") == "."
//   lastComponent("a/b") == "b", lastComponent("a/b/") == "b", lastComponent("/") == "/"
//   join("a", "b") == "a/b", join("a/", "/b") == "a/b", join("", "b") == "b", join("/", "b") == "/b"

public enum Paths {
    /// `path` without trailing slashes (a path of slashes only stays "/").
    static func trimmed(_ path: String) -> Substring {
        var s = Substring(path)
        while s.count > 1 && s.hasSuffix("/") { s = s.dropLast() }
        return s
    }

    /// The folder holding `path`'s last component: "." for a bare name, "/" for an entry of the root.
    public static func parent(_ path: String) -> String {
        let s = trimmed(path)
        if s == "/" { return "/" }
        guard let slash = s.lastIndex(of: "/") else { return "." }
        var head = s[..<slash]
        while head.count > 1 && head.hasSuffix("/") { head = head.dropLast() }
        return head.isEmpty ? "/" : String(head)
    }

    /// The last component of `path` (trailing slashes ignored); "" for "", "/" for "/".
    public static func lastComponent(_ path: String) -> String {
        let s = trimmed(path)
        if s == "/" { return "/" }
        guard let slash = s.lastIndex(of: "/") else { return String(s) }
        return String(s[s.index(after: slash)...])
    }

    /// `name` inside `folder`, with one slash between them (as NSString's appendingPathComponent);
    /// an empty `folder` gives `name`.
    public static func join(_ folder: String, _ name: String) -> String {
        if folder.isEmpty { return name }
        var n = Substring(name)
        while n.hasPrefix("/") { n = n.dropFirst() }
        if n.isEmpty { return folder }
        return folder.hasSuffix("/") ? folder + n : folder + "/" + n
    }
}
