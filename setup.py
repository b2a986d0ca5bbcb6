"""osgan_jax: one-stage GAN training (Shen et al., CVPR 2021) in JAX."""
import setuptools

setuptools.setup(
    name="osgan_jax",
    version="0.1.0",
    description="One-stage GAN training in JAX: exact gradient decomposition, "
    "one- and two-stage train steps, DCGAN/StyleGAN2, offline FID.",
    packages=setuptools.find_packages(include=["osgan_jax", "osgan_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "chex>=0.1.90,<0.2",
        "ml-collections>=1.0,<2",
        "orbax-checkpoint>=0.11,<0.13",
        "tensorflow-datasets>=4.9.8,<5",
        "grain>=0.2.10,<0.3",
        "tensorboardX>=2.6,<3",
        "absl-py>=2.1",
        "numpy>=1.26",
        "pillow>=10",
        "matplotlib>=3.8",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
    },
)
