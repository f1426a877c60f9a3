"""lmid: zero-shot cross-modality MRI translation and segmentation with LMI-conditioned diffusion."""

__version__ = "0.1.0"
