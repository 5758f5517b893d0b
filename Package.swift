// swift-tools-version:6.1
// Flipout3D: Bayesian 3D convolutions whose priors and posteriors are run-time plugins.
import PackageDescription

/// Every bundled distribution plugin: (SwiftPM target and module name, folder under Plugins/).
/// Each becomes `lib<target>.so`; module names are unique because Swift symbols of two plugins
/// with one module name would collide process-wide (see ../shared/notes/plugins-on-linux.md).
let bundledPlugins: [(target: String, folder: String)] = [
    ("FlipoutNormal", "Normal"),
    ("FlipoutLaplace", "Laplace"),
    ("FlipoutGamma", "Gamma"),
    ("FlipoutBeta", "Beta"),
    ("FlipoutGaussianMixture", "GaussianMixture"),
    ("FlipoutScaleMixture", "ScaleMixture"),
    ("FlipoutStudentT", "StudentT"),
]

/// Plugins export exactly their entry symbol: everything else stays local to the `.so`.
let pluginLinkerSettings: [LinkerSetting] = [
    .unsafeFlags(["-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/PluginABI/exports.map"]),
]

// No unsafe flags on the library, SDK and plugin targets: release builds keep every precondition
// (a wrong shape traps instead of reading garbage), and other packages can depend on the products.
// Release builds are whole-module optimised by default.

var products: [Product] = [
    .executable(name: "flipout", targets: ["flipout"]),
    .executable(name: "flipout-plugin-host", targets: ["flipout-plugin-host"]),
    .library(name: "Flipout3D", targets: ["Flipout3D"]),
]
var targets: [Target] = [
    // The C ABI between host and plugins: a header and a module map, nothing else.
    .systemLibrary(name: "PluginABI", path: "Sources/PluginABI"),
    // oneDNN's C API (Debian libdnnl-dev).
    .systemLibrary(name: "CDNNL", path: "Sources/CDNNL"),
    // zlib (Debian zlib1g-dev) for .nii.gz, and libpng 1.6 (libpng-dev) for PNG previews.
    .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
    .systemLibrary(name: "CPNG", path: "Sources/CPNG"),
    // The host <-> communication backend ABI (a header only; the MPI backend is built by scripts/build-mpi-backend).
    .systemLibrary(name: "CommABI", path: "Sources/CommABI"),
    // libffi (Debian libffi-dev): a tiny C shim that hands out its ffi_type globals, for foreign priors.
    .target(name: "CFFI", path: "Sources/CFFI", linkerSettings: [.linkedLibrary("ffi")]),
    // Plugin isolation (libseccomp, Debian libseccomp-dev): the child's seccomp-bpf sandbox, spawning
    // the child with only its channel, memfd shared memory, and the in-process crash guard.
    .target(name: "CPluginIsolation", path: "Sources/CPluginIsolation", linkerSettings: [.linkedLibrary("seccomp")]),
    // The ABI's constants as Swift types and the versioned-struct reader, shared by host and SDK.
    .target(name: "FlipoutABI", dependencies: ["PluginABI"]),
    // Native direct Conv3D kernels for narrow layers: one C body compiled for AVX-512, AVX2 and
    // baseline x86-64 (per-function target attributes), chosen at run time by cpuid.
    .target(name: "CConvKernels", path: "Sources/CConvKernels"),
    // The Swift SDK plugin authors write against; imports only the ABI.
    .target(name: "PluginSDK", dependencies: ["PluginABI", "FlipoutABI"]),
    // The host library: tensors, Conv3D engine, layers, plugin loader, training, prediction.
    .target(
        name: "Flipout3D",
        dependencies: ["PluginABI", "FlipoutABI", "CDNNL", "CZlib", "CPNG", "CFFI", "CommABI", "CConvKernels", "CPluginIsolation"],
        path: "Sources/Host/Flipout3D"
    ),
    // The `flipout` command line.
    .executableTarget(
        name: "flipout",
        dependencies: ["Flipout3D", .product(name: "ArgumentParser", package: "swift-argument-parser")],
        path: "Sources/Host/CLI"
    ),
    // The child process of an isolated (out-of-process) plugin: `flipout` starts one per plugin
    // library from the folder it runs from (docs/plugin-isolation.md).
    .executableTarget(name: "flipout-plugin-host", dependencies: ["Flipout3D"], path: "Sources/Host/PluginHost"),
    // One data-parallel step under mpirun, dumped for DistributedTests (needs no MPI to build).
    .executableTarget(name: "flipout-mpi-probe", dependencies: ["Flipout3D"], path: "Tests/MPIProbe"),
    .target(name: "TestSupport", dependencies: ["Flipout3D"], path: "Tests/TestSupport"),
    // A release executable that hits a wrong shape on purpose; ReleaseTrapTests expects the trap.
    .executableTarget(name: "shape-trap", dependencies: ["Flipout3D"], path: "Tests/ShapeTrap"),
    .testTarget(name: "FlipoutTests", dependencies: ["Flipout3D", "TestSupport", "PluginSDK"], path: "Tests/FlipoutTests"),
]
for plugin in bundledPlugins {
    products.append(.library(name: plugin.target, type: .dynamic, targets: [plugin.target]))
    targets.append(.target(
        name: plugin.target,
        dependencies: ["PluginABI", "PluginSDK"],
        path: "Plugins/\(plugin.folder)",
        linkerSettings: pluginLinkerSettings
    ))
}

let package = Package(
    name: "Flipout3D",
    products: products,
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: targets,
    swiftLanguageModes: [.v5]
)
