"""Read mutated and truncated copies of real files; report every exception type seen.

Run as a script in its own process (so an address-space limit can be set):
``python mutate_and_read.py SEED COUNT OUTDIR FILE...``. Prints one JSON object:
``{"cases": N, "outcomes": {type name: count}, "bad": [[file, mutation, type, message]],
"slowest": seconds}``.
"""
from __future__ import annotations

import json
import random
import resource
import sys
import time
import warnings
from pathlib import Path

ADDRESS_SPACE_LIMIT = 4 * 2**30
ALLOWED = (ValueError, OSError, EOFError)


def mutations(raw: bytes, rng: random.Random):
    """Yield (description, mutated bytes): truncations, header and body byte flips."""
    yield "empty", b""
    for cut in sorted({rng.randrange(0, len(raw)) for _ in range(3)} | {1023, 1024, 1040}):
        if cut < len(raw):
            yield f"truncate@{cut}", raw[:cut]
    for _ in range(8):
        data = bytearray(raw)
        region = 1024 if rng.random() < 0.6 else len(raw)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(0, min(region, len(data)))
            data[pos] = rng.randrange(256)
        yield "flip", bytes(data)
    for offset in (0, 4, 8, 12, 28, 36, 92, 144, 1024, 1028, 1036):
        if offset + 4 <= len(raw):
            data = bytearray(raw)
            data[offset:offset + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80",
                                                  b"\x00\x00\x10\x00", b"\x01\x00\x00\x00"])
            yield f"word@{offset}", bytes(data)


def read_any(path: Path) -> None:
    import mrcz
    if path.suffix.lower() in (".dm3", ".dm4"):
        from mrcz import dm
        dm.readDM(path)
    else:
        mrcz.readMRC(path)


def main() -> None:
    seed, count, outdir, *files = sys.argv[1:]
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    warnings.simplefilter("ignore")
    rng = random.Random(int(seed))
    outdir = Path(outdir)
    outcomes: dict[str, int] = {}
    bad, slowest, cases = [], 0.0, 0
    while cases < int(count):
        source = Path(rng.choice(files))
        for description, data in mutations(source.read_bytes(), rng):
            target = outdir / f"case{source.suffix}"
            target.write_bytes(data)
            start = time.perf_counter()
            try:
                read_any(target)
                kind = "ok"
            except ALLOWED as err:
                kind = type(err).__name__
            except BaseException as err:  # noqa: BLE001 - the point is to catch anything
                kind = type(err).__name__
                bad.append([source.name, description, kind, str(err)[:200]])
            slowest = max(slowest, time.perf_counter() - start)
            outcomes[kind] = outcomes.get(kind, 0) + 1
            cases += 1
    print(json.dumps({"cases": cases, "outcomes": outcomes, "bad": bad, "slowest": slowest}))


if __name__ == "__main__":
    main()
