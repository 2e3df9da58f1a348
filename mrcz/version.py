"""The package version (also written into every file's first label as MRCZ<version>)."""
__version__ = "1.0.0"
