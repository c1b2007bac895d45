"""Pretraining-step throughput, fastmae vs reference vs Hugging Face: the same harness
as `fastmae bench`, runnable from a checkout without installing the package.

    python benchmarks/bench_train.py --model mae_vit_base_patch16 --batch-size 256 \
        --precision bf16 --json bench.json --plot bench.png

Every flag of `fastmae bench` works here (see `python benchmarks/bench_train.py --help`)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastmae.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
