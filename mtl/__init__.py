"""mtl: multi-task image models (shared convolutional trunk, many task heads) for Keras 3."""

__version__ = "0.1.0"
