"""Triton kernels of the fused MAE ops, one file per op, each with its host launcher.
Installed as fastmae.kernels; imports only torch and triton."""
