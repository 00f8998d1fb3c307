"""TEM stage: synthetic micrographs, instance segmentation (U-Net + watershed), metrics."""
