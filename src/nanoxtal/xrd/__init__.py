"""Powder X-ray diffraction: structures, simulation, rendering, models, evaluation."""
