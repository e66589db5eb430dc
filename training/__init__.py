"""Offline training and evaluation for streamloc's models (extra `[train]`).

Data loaders in the official formats (`training.data`), the evaluation metrics of every official
protocol (`training.metrics`), the paper methods' losses (`training.methods`) and the training loop.
"""
