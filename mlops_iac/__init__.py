"""mlops-iac: model versions shipped like infrastructure."""

__version__ = "0.1.0"
