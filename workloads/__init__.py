"""Realistic user-event streams: synthetic generators and loaders for real event logs."""
