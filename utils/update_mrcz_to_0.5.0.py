#!/usr/bin/env python3
"""Upgrade a folder of old MRCZ files (written by mrcz 0.4.1 or older) to the current layout.

Usage: update_mrcz_to_0.5.0.py FOLDER [--recursive] [--backup-dir DIR] [--dry-run]

Originals are copied byte for byte into FOLDER/backup (or --backup-dir) first;
each new file is verified against its original before it replaces it. This is
the same as ``mrcz upgrade FOLDER``.
"""
import sys

try:
    from mrcz.cli import main
except ImportError:  # run from a source checkout without installing
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mrcz.cli import main

if __name__ == "__main__":
    sys.exit(main(["upgrade", *sys.argv[1:]], prog="update_mrcz_to_0.5.0.py"))
