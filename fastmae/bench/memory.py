"""Peak memory of one contender's steps, while other contenders stay resident.

CUDA ("cuda_max_allocated"): torch.cuda.max_memory_allocated, reset before the
contender's steps; what the other contenders and the input batches hold is taken
off and the contender's own resident state (parameters, optimizer state) added
back, so the figure is that state plus the step's peak working memory
(activations, gradients, temporaries), the input batch excluded.

CPU ("cpu_rss_peak_delta"): the process's peak RSS during the steps minus its RSS
just before them (Linux /proc, peak reset through /proc/self/clear_refs, freed heap
returned with malloc_trim first): the working memory of the step beyond what was
already resident. Resident weights are not in it. None where /proc is unavailable."""
import ctypes
import gc

import torch

KIB = 1024


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _cpu_probe_works() -> bool:
    try:
        _proc_status_kib("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "cuda_max_allocated"
        else:
            self.kind = "cpu_rss_peak_delta" if _cpu_probe_works() else None
        self._base = 0

    def start(self) -> None:
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "cpu_rss_peak_delta":
            gc.collect()
            _malloc_trim()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = _proc_status_kib("VmRSS") * KIB

    def stop(self, resident_bytes: int) -> int | None:
        """Peak bytes since start() (see the module docstring for what is counted)."""
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._base + resident_bytes
        if self.kind == "cpu_rss_peak_delta":
            return max(0, _proc_status_kib("VmHWM") * KIB - self._base)
        return None
