"""Language plugin: byte-level mask-predict denoiser for spoken commands (see README.md)."""

from sage_plugins.language.plugin import LanguagePlugin

__all__ = ["LanguagePlugin"]
