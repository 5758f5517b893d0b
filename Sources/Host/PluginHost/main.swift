// flipout-plugin-host: the sandboxed child process that runs one isolated plugin library for flipout.
import Flipout3D
#if canImport(Glibc)
import Glibc
#endif

exit(PluginHostChild.run(CommandLine.arguments))
