// libpng 1.6's C API (Debian libpng-dev); the host uses only the simplified png_image API.
#include <png.h>
