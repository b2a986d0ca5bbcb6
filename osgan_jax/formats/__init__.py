"""Readers of foreign weight formats, with numpy only; below models/ and metrics/.

Knows nothing about any network: the callers (``metrics.inception_weights``,
``models.official``) turn what is read into their parameters.
"""
