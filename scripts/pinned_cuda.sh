# Sourced by the kernel scripts: the pinned CUDA toolchain from PyPI,
# `cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.2` (nvcc 13.0.88), in a virtual environment
# ($GAUSSSKIP_CUDA_VENV, default /tmp/gaussskip-cuda-13.0.2), installed on first use. All five
# extras are listed so that no newer piece is pulled in. Sets `nvcc` and `cuda_include`.
pinned_cuda_pin='cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.2'
pinned_cuda_version='V13.0.88'
pinned_cuda_venv=${GAUSSSKIP_CUDA_VENV:-/tmp/gaussskip-cuda-13.0.2}

ensure_pinned_cuda() {
    local find='ls "$pinned_cuda_venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1'
    nvcc=$(eval "$find" || true)
    if [ -z "$nvcc" ]; then
        echo "installing $pinned_cuda_pin into $pinned_cuda_venv" >&2
        python3 -m venv "$pinned_cuda_venv"
        "$pinned_cuda_venv/bin/pip" install --quiet "$pinned_cuda_pin"
        nvcc=$(eval "$find")
    fi
    local version
    version=$("$nvcc" --version | grep -o "release .*")
    case "$version" in
        *"$pinned_cuda_version"*) ;;
        *) echo "error: $nvcc is '$version', expected $pinned_cuda_version ($pinned_cuda_pin)" >&2; return 1 ;;
    esac
    cuda_include=$(cd "$(dirname "$nvcc")/../include" && pwd)
    command -v g++ >/dev/null || { echo "error: nvcc and the host emulation need g++ (apt-get install g++)" >&2; return 1; }
}
