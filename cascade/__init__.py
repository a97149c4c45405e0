"""cascade: route each query to the smallest model that answers it well."""

__version__ = "0.1.0"
