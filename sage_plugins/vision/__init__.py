"""Vision plugin: convolutional autoencoder whose latent is refined against the observed pixels."""

from sage_plugins.vision.plugin import VisionPlugin

__all__ = ["VisionPlugin"]
