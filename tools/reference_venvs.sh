#!/usr/bin/env bash
# Build virtualenvs of released mrcz versions for tests/test_interop.py and
# tests/test_original_suite.py.
#
#   tools/reference_venvs.sh DIR
#
# Makes DIR/mrcz-<version>/ for each version below.  A venv that already
# carries its .reference-ok stamp is kept as is, so a second run takes well
# under a second.  A version that cannot install is skipped with a message and
# does not fail the script.  Point the tests at DIR with
#   export MRCZ_REFERENCE_VENVS=DIR
#
# Pins: mrcz <= 0.5.0 calls numpy.product (removed in numpy 2.0); mrcz 0.5.x
# calls int() on one-element arrays, which numpy 2.4 refuses. 0.5.8 is left out:
# its wheel puts its modules at the top of site-packages, so `import mrcz` fails.
set -u
set -f  # requirement lists hold brackets: no globbing

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR=$1
PYTHON=${PYTHON:-python3.11}
STAMP=.reference-ok

# version|pip requirements
REFERENCES=(
    "0.6.0|mrcz[compression,blosc2,faster-json]==0.6.0"
    "0.5.10|mrcz==0.5.10 blosc numpy<2.4"
    "0.5.9|mrcz==0.5.9 blosc numpy<2"
    "0.5.7|mrcz==0.5.7 blosc numpy<2"
    "0.5.6|mrcz==0.5.6 blosc numpy<2"
    "0.5.5|mrcz==0.5.5 blosc numpy<2"
    "0.5.4|mrcz==0.5.4 blosc numpy<2"
    "0.5.3|mrcz==0.5.3 blosc numpy<2"
    "0.5.2|mrcz==0.5.2 blosc numpy<2"
    "0.5.1|mrcz==0.5.1 blosc numpy<2"
    "0.5.0|mrcz==0.5.0 blosc numpy<2"
    "0.4.1|mrcz==0.4.1 blosc numpy<2"
    "0.4.0|mrcz==0.4.0 blosc numpy<2"
)

# make_venv VERSION REQUIREMENTS...: build DIR/mrcz-VERSION unless stamped.
make_venv() {
    local version=$1
    shift
    local venv=$DIR/mrcz-$version
    if [ -f "$venv/$STAMP" ]; then
        echo "reference mrcz $version: present ($venv)"
        return 0
    fi
    rm -rf "$venv"
    if "$PYTHON" -m venv "$venv" \
        && "$venv/bin/python" -m pip install --quiet "$@" \
        && "$venv/bin/python" -I - "$version" <<'EOF'
import sys
import warnings
warnings.simplefilter('ignore')
import blosc
import mrcz
assert mrcz.__version__ == sys.argv[1], mrcz.__version__
EOF
    then
        "$venv/bin/python" -I -c \
            'import mrcz, numpy; print(mrcz.__version__, numpy.__version__)' \
            > "$venv/$STAMP"
        echo "reference mrcz $version: made ($venv)"
    else
        rm -rf "$venv"
        echo "reference mrcz $version: SKIPPED, could not install: $*" >&2
    fi
}

mkdir -p "$DIR" || exit 1
for entry in "${REFERENCES[@]}"; do
    version=${entry%%|*}
    # Word splitting of the requirement list is intended (globbing is off).
    # shellcheck disable=SC2086
    make_venv "$version" ${entry#*|}
done
