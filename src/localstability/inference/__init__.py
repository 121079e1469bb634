"""Inference: load and cache diffusers pipelines per engine, run one generation.

This layer never imports FastAPI.
"""
