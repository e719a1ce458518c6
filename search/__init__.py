"""The search service: Ray Tune + Optuna searches over pruning schedules, tracked in MLflow.

It depends on `oneprune` and owns every Ray and MLflow import; the library never imports
them.
"""
