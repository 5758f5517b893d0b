# Shared by scripts/test, scripts/demo and scripts/bench: install what the build needs, then build.
# Source it; it defines `ensure_packages PKG...` and `build_release`, and cds to the repository.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Install the Debian packages that are missing (apt-get update first), as root or through sudo.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then missing+=("$p"); fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    echo "${0##*/}: installing missing packages: ${missing[*]}" >&2
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "${0##*/}: need root or sudo to install ${missing[*]}" >&2; exit 1; }
        sudo=(sudo)
    fi
    "${sudo[@]+"${sudo[@]}"}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]+"${sudo[@]}"}" apt-get install -y "${missing[@]}"
}

build_packages=(libdnnl-dev libffi-dev libpng-dev zlib1g-dev libseccomp-dev binutils gcc)
# Optional: data-parallel training (scripts/build-mpi-backend, scripts/train-mpi, the MPI tests).
mpi_packages=(openmpi-bin libopenmpi-dev)

build_release() {
    if ! command -v swift >/dev/null && [[ -x /opt/swift/usr/bin/swift ]]; then
        export PATH="/opt/swift/usr/bin:$PATH"
    fi
    command -v swift >/dev/null || { echo "${0##*/}: swift is not on PATH (install a Swift 6.3 toolchain)" >&2; exit 1; }
    swift build -c release --build-tests "$@"
}
