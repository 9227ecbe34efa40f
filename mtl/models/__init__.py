"""Models: trunks (image -> feature map), heads (features -> task outputs) and the one builder."""
