"""vlm_jax: a JAX/Flax research codebase for the Qwen-VL family (Qwen3-VL)."""

from setuptools import find_packages, setup

setup(
    name="vlm_jax",
    version="0.1.0",
    description="Qwen3-VL vision-language models in JAX/Flax: model, data, training, inference.",
    python_requires=">=3.11",
    packages=find_packages(include=["vlm_jax", "vlm_jax.*"]),
    package_data={"vlm_jax": ["assets/*"]},
    install_requires=[
        "absl-py>=1.0",  # command-line flags of every `python -m vlm_jax.<verb>`
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "array-record>=0.7",
        "tensorflow-datasets>=4.9.8",
        "einops>=0.8",
        "ml-collections>=1.0",
        "chex>=0.1.89",
        "safetensors>=0.5",
        "tokenizers>=0.21",
        "pillow>=10",
        "av>=14",  # PyAV (bundles FFmpeg): mp4 / webm / mov / avi / mkv videos, decoding only the sampled frames
        "numpy>=1.26",
        "scipy>=1.10",  # Hungarian matching of box rewards, t-quantiles of the sweep statistics
        "tensorboardX>=2.6",
        "tqdm>=4.60",
        "matplotlib>=3.8",  # curves.png of every run
        "pyarrow>=14",  # the public benchmarks' parquet files (python -m vlm_jax.eval --benchmark)
    ],
    extras_require={
        # The numerical oracle: Hugging Face transformers on a CPU build of torch.
        # papermill, jupytext, ipykernel: tests/test_notebooks.py runs and checks the colab/ notebooks.
        "test": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.8", "torch==2.13.0", "transformers>=4.57",
                 "papermill>=2.6", "jupytext>=1.16", "ipykernel>=6"],
        "torch": ["torch==2.13.0", "transformers>=4.57"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={},
)
