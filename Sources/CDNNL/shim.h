// oneDNN's C API, as Debian's libdnnl-dev installs it.
#include <oneapi/dnnl/dnnl.h>
