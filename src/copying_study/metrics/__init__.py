"""Metrics: replication statistics, FID, CLIPScore, caption similarity, image complexity and correlations."""
