"""mq-deploy: export and deployment compiler for Mamba models."""

__version__ = "0.1.0"
