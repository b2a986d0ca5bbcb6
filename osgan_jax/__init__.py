"""osgan_jax: one-stage GAN training in JAX."""
