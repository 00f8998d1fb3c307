"""TEM stage: synthetic bright-field micrographs with exact instance truth."""
