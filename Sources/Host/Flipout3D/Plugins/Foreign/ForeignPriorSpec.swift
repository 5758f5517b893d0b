// The `--foreign-prior` spec: PATH:SYMBOL(x:T, name:T=default, ...)->T[@ID], parsed and checked.
import FlipoutABI
import Foundation

/// A plain C log-density function in a third-party shared library, described on the command line:
///
///     PATH:SYMBOL(x:T, NAME:T=DEFAULT, ...)->T[@ID]
///
/// e.g. `./libdens.so:my_logpdf(x:d, loc:d=0, scale:d=1)->d@org.example.cauchy` for
/// `double my_logpdf(double x, double loc, double scale)`.
///   - The first argument is the value whose density is computed and must be named `x`.
///   - Every further argument is a family parameter and needs a default (`NAME:T=DEFAULT`): it is
///     the prior's value unless `--prior-param NAME=V` overrides it. `NAME:T=DEFAULT>0` declares
///     the parameter positive: it is stored through softplus (so `--learn-prior` keeps it > 0)
///     and a value <= 0 is a domain error, never passed to the function. Without `>0` the
///     parameter is unconstrained (identity transform).
///   - T is `d` (double) or `f` (float), for arguments and the return value alike.
///   - Without `@ID` the family id is `foreign.SYMBOL`.
/// PATH may itself contain ':'; the symbol starts after the last ':' before the '('.
public struct ForeignPriorSpec: Sendable, Equatable {
    /// A C scalar type a foreign function may take or return.
    public enum ScalarType: Character, Sendable, CustomStringConvertible {
        case double = "d", float = "f"
        public var description: String { self == .double ? "double" : "float" }
    }

    public struct Argument: Sendable, Equatable {
        public let name: String
        public let type: ScalarType
        /// The parameter's default (nil only for x).
        public let defaultValue: Double?
        /// Declared `>0`: softplus storage, and values <= 0 are refused.
        public var positive: Bool = false
        /// How the host stores the parameter.
        public var transform: ParameterTransform { positive ? .softplus : .identity }
    }

    /// The spec exactly as given.
    public let text: String
    /// The library path as written (resolve with `DynamicLibrary.resolve`).
    public let path: String
    public let symbol: String
    /// x first, then the family parameters in call order.
    public let arguments: [Argument]
    public let returnType: ScalarType
    public let id: String

    /// The family parameters: every argument after x.
    public var parameters: ArraySlice<Argument> { arguments.dropFirst() }

    /// `symbol(x:d, loc:d=0)->d`, for messages and descriptions.
    public var signature: String {
        let args = arguments.map { a in "\(a.name):\(a.type.rawValue)" + (a.defaultValue.map { "=\(Self.format($0))" } ?? "") + (a.positive ? ">0" : "") }
        return "\(symbol)(\(args.joined(separator: ", ")))->\(returnType.rawValue)"
    }

    /// The C prototype this spec promises, e.g. `double my_logpdf(double x, double loc)`.
    public var prototype: String {
        "\(returnType) \(symbol)(" + arguments.map { "\($0.type) \($0.name)" }.joined(separator: ", ") + ")"
    }

    static let example = "./libdens.so:my_logpdf(x:d,loc:d=0,scale:d=1)->d@org.example.cauchy"

    public init(parsing spec: String) throws {
        func fail(_ why: String) -> PluginLoadError {
            PluginLoadError(.badForeignSpec, file: "", "--foreign-prior \"\(spec)\": \(why). The form is PATH:SYMBOL(x:T,NAME:T=DEFAULT,...)->T[@ID] with T = d (double) or f (float), e.g. \(Self.example).")
        }
        text = spec
        var rest = Substring(spec.trimmingCharacters(in: .whitespaces))

        // [@ID] at the end: after the last '@' that follows the closing parenthesis.
        var id: String?
        if let close = rest.lastIndex(of: ")"), let at = rest[close...].lastIndex(of: "@") {
            let raw = rest[rest.index(after: at)...].trimmingCharacters(in: .whitespaces)
            guard !raw.isEmpty else { throw fail("nothing after '@'; give a reverse-DNS id such as org.example.cauchy, or drop the '@'") }
            guard raw.contains("."), raw.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) else {
                throw fail("id \"\(raw)\" is not a reverse-DNS name such as org.example.cauchy")
            }
            id = raw
            rest = rest[..<at]
        }

        // ->T at the end.
        guard let close = rest.lastIndex(of: ")") else { throw fail("no argument list; write the signature as SYMBOL(x:d,...)->d") }
        let tail = rest[rest.index(after: close)...].trimmingCharacters(in: .whitespaces)
        guard tail.hasPrefix("->") else { throw fail("no return type after ')'; end the signature with ->d or ->f") }
        let returnText = tail.dropFirst(2).trimmingCharacters(in: .whitespaces)
        guard returnText.count == 1, let ret = ScalarType(rawValue: returnText.first!) else {
            throw fail("unsupported return type \"\(returnText)\"; use d (double) or f (float)")
        }
        returnType = ret

        // PATH:SYMBOL( ... )
        guard let open = rest[..<close].lastIndex(of: "(") else { throw fail("')' without '('") }
        let head = rest[..<open]
        guard let colon = head.lastIndex(of: ":") else { throw fail("no ':' between the library path and the symbol") }
        path = String(head[..<colon]).trimmingCharacters(in: .whitespaces)
        symbol = String(head[head.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
        guard !path.isEmpty else { throw fail("the library path is empty") }
        guard let first = symbol.first, first == "_" || first.isLetter,
              symbol.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }) else {
            throw fail("\"\(symbol)\" is not a C symbol name")
        }

        // The arguments.
        let list = rest[rest.index(after: open)..<close]
        var args: [Argument] = []
        for (i, item) in list.split(separator: ",", omittingEmptySubsequences: false).enumerated() {
            let position = i + 1
            let parts = item.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty else {
                let shown = item.trimmingCharacters(in: .whitespaces)
                throw fail(shown.isEmpty ? "argument \(position) is empty" : "argument \(position) \"\(shown)\" needs a name and a type, NAME:T")
            }
            let name = parts[0]
            guard let c = name.first, c == "_" || c.isLetter, name.allSatisfy({ $0 == "_" || $0.isLetter || $0.isNumber }) else {
                throw fail("argument \(position) name \"\(name)\" is not an identifier")
            }
            let typeAndDefault = parts[1].split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard typeAndDefault[0].count == 1, let type = ScalarType(rawValue: typeAndDefault[0].first!) else {
                throw fail("unsupported type \"\(typeAndDefault[0])\" for argument \(name); use d (double) or f (float)")
            }
            var value: Double?
            var positive = false
            if typeAndDefault.count == 2 {
                var text = Substring(typeAndDefault[1])
                if text.hasSuffix(">0") { positive = true; text = text.dropLast(2) }
                else if text.contains(">") || text.contains("<") {
                    throw fail("the only constraint is >0 after the default (\(name):\(type.rawValue)=1>0); \"\(typeAndDefault[1])\" is not one")
                }
                guard let v = Double(text.trimmingCharacters(in: .whitespaces)), v.isFinite else {
                    throw fail("the default of \(name), \"\(text)\", is not a finite number")
                }
                guard !positive || v > 0 else { throw fail("parameter \(name) is declared >0 but its default is \(Self.format(v))") }
                value = v
            }
            args.append(Argument(name: name, type: type, defaultValue: value, positive: positive))
        }

        // Names against arity: x first, then at least one parameter, each named once, each with a value.
        guard let x = args.first else { throw fail("the argument list is empty; the function takes x and at least one parameter") }
        guard x.name == "x" else {
            throw fail("the first argument is \"\(x.name)\", but it must be x, the value whose log density the function returns (list every C argument in order: x first)")
        }
        guard x.defaultValue == nil else { throw fail("x cannot have a default; only the parameters after it do") }
        guard args.count >= 2 else { throw fail("\(symbol) takes only x; a prior family needs at least one parameter after it (e.g. scale:d=1)") }
        var seen = Set<String>()
        for a in args where !seen.insert(a.name).inserted { throw fail("argument name \(a.name) appears twice") }
        for a in args.dropFirst() where a.defaultValue == nil {
            throw fail("parameter \(a.name) has no value; give it a default, e.g. \(a.name):\(a.type.rawValue)=1 (--prior-param \(a.name)=V still overrides it)")
        }
        arguments = args
        self.id = id ?? "foreign.\(symbol)"
    }

    static func format(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : "\(v)"
    }
}
