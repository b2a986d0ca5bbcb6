"""osgan_jax: one-stage GAN training (Shen et al., CVPR 2021) in JAX."""

import setuptools

setuptools.setup(
    name="osgan_jax",
    version="0.1.0",
    description="One-stage GAN training in JAX: exact gradient decomposition, "
    "one- and two-stage train steps, DCGAN/StyleGAN2, offline FID.",
    packages=setuptools.find_packages(include=["osgan_jax", "osgan_jax.*"]),
    python_requires=">=3.10",
    # jax 0.10 (Python >= 3.10; CI: 0.10.2 on Python 3.11) to 0.12 (0.11 and 0.12
    # need Python >= 3.12; a GPU machine ran this code unchanged with jax 0.11.2, flax
    # 0.12.10, optax 0.2.8 on Python 3.12). An accelerator's JAX that is already
    # installed satisfies this and is kept: install with no extra there.
    install_requires=[
        "jax>=0.10,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "chex>=0.1.90,<0.2",
        "ml-collections>=1.0,<2",
        "orbax-checkpoint>=0.11,<0.13",
        "tensorflow-datasets>=4.9.8,<5",
        # tfds imports it on every download/build path but does not declare it.
        "importlib_resources>=6",
        "grain>=0.2.10,<0.3",
        "tensorboardX>=2.6,<3",
        "absl-py>=2.1",
        "numpy>=1.26",
        "pillow>=10",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "portpicker>=1.5",  # osgan_jax.launch picks the coordinator's port
    ],
    # JAX's own extras (jax 0.10-0.12 define these): CUDA 12 or 13 wheels with the
    # matching NVIDIA libraries ("cuda" is JAX's default, CUDA 12), or libtpu.
    extras_require={
        # The tests marked torch (cross-checks against PyTorch) also need CPU torch:
        # .ci/run installs torch==2.13.0 (the CPU wheel); not listed here, as PyPI's
        # Linux torch is the CUDA build.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "pyink==26.5.1"],
        # Building a tfds data set (MNIST, CIFAR-10, CelebA, LSUN) the first time runs
        # TensorFlow's readers; reading a built one does not (array_record + grain).
        "tfds": ["tensorflow-cpu>=2.16"],
        # To view the event files a run writes: tensorboard --logdir WORKDIR
        "tensorboard": ["tensorboard>=2.16"],
        "cuda": ["jax[cuda12]>=0.10,<0.13"],
        "cuda12": ["jax[cuda12]>=0.10,<0.13"],
        "cuda13": ["jax[cuda13]>=0.10,<0.13"],
        "tpu": ["jax[tpu]>=0.10,<0.13"],
    },
)
