"""Entropic Student: split computing with a learned entropy bottleneck."""
