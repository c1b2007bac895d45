from setuptools import find_packages, setup

DALI = "nvidia-dali-cuda130"
ONNX = ["onnx", "onnxruntime", "onnxscript"]

setup(
    name="fastmae",
    version="0.1.0",
    description="Fast Masked Autoencoder (MAE) pretraining of Vision Transformers: "
    "Triton kernels, flash attention, GPU data loading.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ ships inside the package as fastmae.kernels, never as a top-level `kernels`.
    packages=find_packages(include=["fastmae", "fastmae.*"]) + ["fastmae.kernels"],
    package_dir={"fastmae.kernels": "kernels"},
    install_requires=[
        "torch>=2.5",
        "torchvision",
        "numpy",
        "pillow",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "safetensors",
        "triton; platform_system == 'Linux'",
    ],
    extras_require={
        "dali": [DALI],
        "flash": ["flash-attn"],
        "hf": ["transformers"],
        "onnx": ONNX,
        "dev": ["pytest", "pytest-benchmark", "transformers", "timm", "safetensors", DALI, *ONNX],
    },
    entry_points={"console_scripts": ["fastmae = fastmae.cli:main"]},
)
