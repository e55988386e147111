"""Text layer: token counting, segmentation, relevance, protected spans."""
