"""Workstation tools: train, quantise, evaluate and flash the emotion model."""
