"""Performance figures of a model and a device, below both train and bench: counted FLOPs
per image and datasheet peak throughputs (MFU is one divided by the other)."""
from .flops import block_flops, forward_flops, named_config, train_flops_per_image
from .peaks import measure_matmul_tflops, spec_peak_tflops

__all__ = ["block_flops", "forward_flops", "named_config", "train_flops_per_image",
           "measure_matmul_tflops", "spec_peak_tflops"]
