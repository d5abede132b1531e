# Sourced by the device-call scripts (gpu_session.sh, gpu_step.sh) with W set to their work
# folder: a clock for the log, the NVIDIA Vulkan driver from the packages in .gl/ (not under
# DRY=1, a rehearsal on lavapipe), the packed binaries unpacked into $W/bin (B), and the
# adapter report in $W/res.
S=$SECONDS
el() { echo $((SECONDS - S)); }
log() { echo "[$(el) s] $*"; }
rm -rf "$W"
mkdir -p "$W/res"
if [ -z "${DRY:-}" ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [ -f "$VK_DRIVER_FILES" ] || export VK_DRIVER_FILES=$(find / -name 'nvidia_icd*.json' 2>/dev/null | head -1)
    log "VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
tar xJf .gpu/bin.tar.xz -C "$W"
B=$W/bin
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$W/res/nvidia-smi.txt" 2>&1
cat "$W/res/nvidia-smi.txt"
timeout 60 "$B/wmvl" info > "$W/res/info.txt" 2>&1
log "info rc=$?"; head -12 "$W/res/info.txt"
