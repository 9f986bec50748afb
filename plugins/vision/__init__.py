"""Vision plugin: convolutional autoencoder whose latent is refined against the observed pixels."""

from plugins.vision.plugin import VisionPlugin

__all__ = ["VisionPlugin"]
