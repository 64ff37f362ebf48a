#!/usr/bin/env bash
# The GPU check: runs the tests marked `cuda` (tests/test_cuda.py: a search step and a search
# with the cost term, training in float32 / bf16 / fp16 with GradScaler, the packed engine fed
# from a GPU model, DDP over NCCL under torchrun) within a time limit, then prints one line.
# Usage: tools/gpu_check.sh [SECONDS]   (default 480; exit status: pytest's, 124 on timeout)
set -u
cd "$(dirname "$0")/.."
limit="${1:-480}"
python="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
gpu=$("$python" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA", "| torch", torch.__version__, "| CUDA", torch.version.cuda)' 2>&1 | tail -n 1)
log=$(mktemp "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
start=$(date +%s)
timeout --kill-after=10 "$limit" "$python" -m pytest tests/test_cuda.py -m cuda -q -rfEs -n 0 \
    -p no:cacheprovider >"$log" 2>&1
rc=$?
seconds=$(( $(date +%s) - start ))
counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$log" | tail -n 1 | sed -E 's/=+//g; s/^ +| +$//g')
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMEOUT after ${limit}s"
elif [ "$rc" -ne 0 ]; then verdict="FAIL"
elif grep -qE '[0-9]+ passed' <<<"$counts"; then verdict="PASS"
else verdict="SKIPPED"
fi
[ "$rc" -ne 0 ] && tail -n 40 "$log" >&2
echo "gpu_check: $verdict: ${counts:-no pytest summary} (${seconds}s; $gpu; log $log)"
exit "$rc"
