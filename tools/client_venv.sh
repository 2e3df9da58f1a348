#!/usr/bin/env bash
# Build a virtualenv of client programs for tests/test_clients.py:
# rosettasciio and HyperSpy (which read MRCZ through `import mrcz`), gemmi and
# mrcfile, with this package installed from the working tree.
#
#   tools/client_venv.sh DIR
#
# Makes DIR/ as a venv unless it already carries its .client-ok stamp (then a
# second run takes well under a second).  The tests run rosettasciio/HyperSpy
# in that venv with this tree first on PYTHONPATH, so the venv's own copy of
# mrcz need not be the newest.  Point the tests at it with
#   export MRCZ_CLIENT_VENV=DIR
#
# A venv of its own because HyperSpy brings scipy, matplotlib, scikit-image
# and more that the project's own test venv does not need; `rosettasciio[mrcz]`
# is not used since that extra installs mrcz 0.6.0 from PyPI.  pytest is for
# rosettasciio's own rsciio/tests/test_mrcz.py.
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR=$1
PYTHON=${PYTHON:-python3}
STAMP=.client-ok
REPO=$(cd "$(dirname "$0")/.." && pwd)

if [ -f "$DIR/$STAMP" ]; then
    echo "client venv: present ($DIR: $(cat "$DIR/$STAMP"))"
    exit 0
fi
rm -rf "$DIR"
if "$PYTHON" -m venv "$DIR" \
    && "$DIR/bin/python" -m pip install --quiet --upgrade pip \
    && "$DIR/bin/python" -m pip install --quiet "$REPO" rosettasciio hyperspy \
        gemmi mrcfile pytest \
    && "$DIR/bin/python" -I -c 'import hyperspy.api, rsciio.mrcz, gemmi, mrcfile, mrcz, blosc'
then
    "$DIR/bin/python" -I -c \
        'import hyperspy, rsciio, gemmi, numpy; print("hyperspy", hyperspy.__version__, "rosettasciio", rsciio.__version__, "gemmi", gemmi.__version__, "numpy", numpy.__version__)' \
        > "$DIR/$STAMP"
    echo "client venv: made ($DIR: $(cat "$DIR/$STAMP"))"
else
    rm -rf "$DIR"
    echo "client venv: could not be made in $DIR" >&2
    exit 1
fi
