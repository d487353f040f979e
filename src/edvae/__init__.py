"""edvae: discrete variational autoencoders that keep their whole codebook in use."""

__version__ = "0.1.0"
