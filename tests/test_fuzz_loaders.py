"""Seeded mutation fuzzing of the data loaders (docs/security.md, "Tests").

Each format's valid tiny fixture is mutated (truncations, bit flips, byte insertions and
deletions, duplicated ranges, extreme values written over header fields, format tokens,
numbers in text swapped for extreme ones; inside the compressed stream as well as on the
compressed bytes) and loaded, in ONE capped child per format. Every case must load or raise
:class:`PoisonlabError` with a one-line message; another exception, a crash or a case running
past its time limit fails the test, naming the seed, the case and the mutation, with the
mutated file kept under the test's tmp folder.

``POISONLAB_FUZZ_CASES=N`` runs N cases per format instead of the default (``-m fuzz``
selects these tests); ``POISONLAB_FUZZ_SEED`` changes the seed. A case is reproduced from
its seed, format and number alone: each case draws from its own ``Random(f"{seed}/{format}/{case}")``.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile import run_python
from PIL import Image
from test_data_adult import write_files as write_adult
from test_data_cifar10 import META, batch, make_archive, py2_pickle, write_batches
from test_data_gtsrb import make_tree as make_gtsrb_tree
from test_data_gtsrb import make_zip as make_gtsrb_zip
from test_data_idx import write_set
from test_data_imdb import make_tgz as make_imdb_tgz
from test_data_imdb import make_tree as make_imdb_tree

pytestmark = pytest.mark.fuzz

SEED = int(os.environ.get("POISONLAB_FUZZ_SEED", "0"))
CASES = int(os.environ.get("POISONLAB_FUZZ_CASES", "0"))  # 0: each format's default below
CASE_SECONDS = 10  # one case running longer is a hang

PICKLE_TOKENS = [b"c", b"R", b"b", b"(", b"t", b"u", b"s", b"a", b"e", b"N", b"]", b"}", b")", b"q\x00", b"h\x00",
                 b"r\xff\xff\xff\x7f", b"J\xff\xff\xff\x7f", b"K\x00", b"\x8e", b"\x8d", b"\x94", b"\x93", b".",
                 b"cnumpy\ndtype\n", b"cnumpy\nndarray\n", b"cnumpy.core.multiarray\n_reconstruct\n",
                 b"U\x02O8", b"U\x02<f", b"U\x02u2", b"\x80\x05", b"G", b"\x8f", b"\x91", b"P", b"Q", b"\x82"]
IMAGE_TOKENS = [b"P6", b"P5", b"P3", b"\n", b" ", b"#", b"65535", b"0", b"99999", b"4294967295", b"-1",
                b"IHDR", b"IDAT", b"PLTE", b"tRNS", b"iCCP", b"zTXt", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]
TEXT_TOKENS = [b";", b",", b", ", b"\n", b"\r", b"\x00", b"\"", b"?", b"<=50K", b">50K.", b"|", b"\xff\xfe",
               b"ClassId", b"Filename", b"x" * 300, b"\xef\xbb\xbf"]
ARCHIVE_TOKENS = [b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"ustar\x0000", b"ustar  \x00",
                  b"././@PaxHeader", b"././@LongLink", b"0", b"1", b"2", b"3", b"5", b"6", b"x", b"g", b"L", b"S",
                  b"77777777777", b"\x80\x00\x00\x00\xff\xff\xff\xff", b"../", b"/", b"\x1f\x8b\x08"]


# ---------------------------------------------------------------- the loop, run in the child

_CHILD = r'''
import gzip, io, json, os, random, re, shutil, signal, sys, traceback
from pathlib import Path
from poisonlab.errors import PoisonlabError

cfg = json.loads(CFG)
folder = Path(cfg["folder"])
targets = [folder / t for t in cfg["targets"]]
originals = {p: p.read_bytes() for p in targets}
tokens = [bytes.fromhex(t) for t in cfg["tokens"]]
INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x00\x00\x00\x00",
               b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\x00\x00\x00\x01",
               b"\xff\xff\xff\xff\xff\xff\xff\xff", b"\x00\x00\x01\x00", b"\x00\x00\x08\x03", b"\x00\x00\x08\x01"]
NUMBERS = ["0", "-1", "43", "-0", "1" * 25, "9" * 400, "4294967297", "1e9", "", " ", "0x10", "\u0663", "1_0", "nan"]

class Hang(BaseException):
    pass

def on_alarm(*_):
    raise Hang()

signal.signal(signal.SIGALRM, on_alarm)

def one(data, rng, header):
    n = len(data)
    op = rng.choice(["truncate", "flip", "insert", "delete", "header", "token", "duplicate", "number"])
    if n == 0:
        op = "insert"
    if op == "truncate":
        k = rng.randrange(n)
        return data[:k], f"truncate at {k}"
    if op == "flip":
        b = bytearray(data)
        spots = [rng.randrange(n) for _ in range(rng.randint(1, 8))]
        for i in spots:
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b), f"flip bits at {spots}"
    if op == "insert":
        i = rng.randrange(n + 1)
        ins = rng.randbytes(rng.randint(1, 16))
        return data[:i] + ins + data[i:], f"insert {ins.hex()} at {i}"
    if op == "delete":
        i = rng.randrange(n)
        j = min(n, i + rng.randint(1, 64))
        return data[:i] + data[j:], f"delete {i}:{j}"
    if op == "header":
        v = rng.choice(INTERESTING)
        i = rng.randrange(max(1, min(header, n)))
        return data[:i] + v + data[i + len(v):], f"write {v.hex()} at {i}"
    if op == "token" and tokens:
        t = rng.choice(tokens)
        i = rng.randrange(n + 1)
        if rng.random() < 0.5:
            return data[:i] + t + data[i:], f"insert token {t[:40]!r} at {i}"
        return data[:i] + t + data[i + len(t):], f"write token {t[:40]!r} at {i}"
    if op == "number":
        runs = [m.span() for m in re.finditer(rb"[0-9]+", data[:65536])]
        if runs:
            a, b = rng.choice(runs)
            v = rng.choice(NUMBERS).encode()
            return data[:a] + v + data[b:], f"number at {a}:{b} -> {v[:30]!r}"
    i, j = sorted(rng.randrange(n + 1) for _ in range(2))
    k = rng.randrange(n + 1)
    return data[:k] + data[i:j] + data[k:], f"duplicate {i}:{j} at {k}"

def mutate(path, rng):
    data = originals[path]
    inner = cfg["inner"] and path.name.endswith((".gz", ".tgz")) and rng.random() < 0.6
    if inner:
        data = gzip.decompress(data)
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data, what = one(data, rng, cfg["header"])
        steps.append(what)
    if inner:
        data = gzip.compress(data, 1)
        steps.insert(0, "inside the gzip stream:")
    return data, " ".join(steps)

LOADERS = {
    "mnist": lambda: __import__("poisonlab.data.idx", fromlist=["x"]).load_mnist([folder]),
    "cifar10": lambda: __import__("poisonlab.data.cifar10", fromlist=["x"]).load_cifar10([folder]),
    "gtsrb": lambda: __import__("poisonlab.data.gtsrb", fromlist=["x"]).load_gtsrb([folder]),
    "imdb": lambda: __import__("poisonlab.data.imdb", fromlist=["x"]).load_imdb([folder]),
    "adult": lambda: __import__("poisonlab.data.adult", fromlist=["x"]).load_adult([folder]),
}

def archives():
    from poisonlab.data.safe_files import iter_archive, safe_extract
    for p in targets:
        list(iter_archive(p))
        scratch = folder.parent / "extracted"
        shutil.rmtree(scratch, ignore_errors=True)
        safe_extract(p, scratch)

def trigger():
    from poisonlab import triggers
    for p in targets:
        triggers._read_rgba.__wrapped__(str(p), 0)

def imdb_names(rng):
    """Mutate a review's file name instead of its bytes."""
    reviews = sorted(p for p in folder.rglob("*.txt") if p.parent.name in ("neg", "pos"))
    victim = rng.choice(reviews)
    name, _ = one(victim.name.encode(), rng, 8)
    name = name.replace(b"/", b"_").replace(b"\x00", b"_")[:200] or b"_"  # a name the file system takes
    if name in (b".", b".."):
        name = b"_"
    new = victim.parent / os.fsdecode(name)
    return victim, new

LOADERS["archives"], LOADERS["trigger"] = archives, trigger
load = LOADERS[cfg["loader"]]
failures, loaded, refused = [], 0, 0
for case in range(cfg["cases"]):
    rng = random.Random(f"{cfg['seed']}/{cfg['format']}/{case}")
    renamed = None
    if cfg["names"] and rng.random() < 0.3:
        victim, new = imdb_names(rng)
        if os.path.lexists(new):
            continue
        victim.rename(new)
        renamed, path, what = (new, victim), new, f"rename {victim.name!r} -> {new.name!r}"
    else:
        path = rng.choice(targets)
        data, what = mutate(path, rng)
        path.write_bytes(data)
    problem = None
    signal.alarm(cfg["case_seconds"])
    try:
        load()
        loaded += 1
    except PoisonlabError as e:
        refused += 1
        text = str(e)
        if "\n" in text or "\r" in text or len(text) > 1500:
            problem = f"PoisonlabError not on one line: {text[:300]!r}"
    except Hang:
        problem = f"still running after {cfg['case_seconds']}s (a hang)"
    except BaseException as e:  # noqa: BLE001 - the point: anything else is a finding
        tb = traceback.extract_tb(e.__traceback__)[-1]
        problem = f"{type(e).__name__}: {str(e)[:200]} at {tb.filename}:{tb.lineno}"
    finally:
        signal.alarm(0)
    if problem:
        keep = Path(cfg["keep"]) / f"{cfg['format']}-case{case}-{path.name}"
        keep.parent.mkdir(parents=True, exist_ok=True)
        if renamed is None:
            keep.write_bytes(path.read_bytes())
        failures.append({"case": case, "file": path.name, "mutation": what[:300], "problem": problem, "kept": str(keep)})
        if len(failures) >= 5:
            break
    if renamed is not None:
        renamed[0].rename(renamed[1])
    else:
        path.write_bytes(originals[path])
print(json.dumps({"failures": failures, "loaded": loaded, "refused": refused}))
'''


# ---------------------------------------------------------------- fixtures, one per format


def _png(path: Path) -> None:
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = np.arange(7) * 30
    rgba[..., 3] = 200
    Image.fromarray(rgba, "RGBA").save(path)


def _archives(folder: Path) -> list[str]:
    members = [("top/a.txt", b"alpha" * 20), ("top/sub/b.bin", bytes(range(256))), ("c.txt", b"")]
    with tarfile.open(folder / "plain.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("top/link")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(link)
    with tarfile.open(folder / "packed.tar.gz", "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(folder / "packed.zip", "w") as zf:
        for i, (name, data) in enumerate(members):
            zf.writestr(name, data, zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED)
    return ["plain.tar", "packed.tar.gz", "packed.zip"]


def _build(fmt: str, folder: Path) -> dict:
    """Write format ``fmt``'s fixture into ``folder``; return the child's settings for it."""
    folder.mkdir(parents=True)
    if fmt == "idx-raw":
        write_set(folder, gz=False)
        return dict(loader="mnist", targets=[p.name for p in sorted(folder.iterdir())], header=16, tokens=[])
    if fmt == "idx-gz":
        write_set(folder, gz=True)
        return dict(loader="mnist", targets=[p.name for p in sorted(folder.iterdir())], header=16, tokens=[])
    if fmt == "cifar-pickle":
        write_batches(folder, {"test_batch": py2_pickle(batch(6)), "batches.meta": py2_pickle(META)})
        return dict(loader="cifar10", targets=["test_batch", "data_batch_1", "batches.meta"], header=80,
                    tokens=PICKLE_TOKENS)
    if fmt == "cifar-tgz":
        src = write_batches(folder.parent / "cifar-src", {"test_batch": py2_pickle(batch(6))})
        make_archive(src, folder / "cifar-10-python.tar.gz")
        return dict(loader="cifar10", targets=["cifar-10-python.tar.gz"], header=600, tokens=PICKLE_TOKENS + ARCHIVE_TOKENS)
    if fmt == "gtsrb-tree":
        make_gtsrb_tree(folder)
        targets = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in (".csv", ".ppm"))
        return dict(loader="gtsrb", targets=targets, header=20, tokens=IMAGE_TOKENS + TEXT_TOKENS)
    if fmt == "gtsrb-zip":
        make_gtsrb_zip(make_gtsrb_tree(folder.parent / "gtsrb-src"), folder / "GTSRB.zip")
        return dict(loader="gtsrb", targets=["GTSRB.zip"], header=64, tokens=ARCHIVE_TOKENS + IMAGE_TOKENS)
    if fmt == "imdb-tgz":
        make_imdb_tgz(make_imdb_tree(folder.parent / "imdb-src"), folder / "aclImdb_v1.tar.gz")
        return dict(loader="imdb", targets=["aclImdb_v1.tar.gz"], header=512, tokens=ARCHIVE_TOKENS)
    if fmt == "imdb-folder":
        make_imdb_tree(folder)
        targets = sorted(p.relative_to(folder).as_posix() for p in (folder / "aclImdb").rglob("*.txt")
                         if p.parent.name in ("neg", "pos"))
        return dict(loader="imdb", targets=targets, header=8, tokens=TEXT_TOKENS, names=True)
    if fmt == "adult":
        write_adult(folder)
        return dict(loader="adult", targets=["adult.data", "adult.test"], header=40, tokens=TEXT_TOKENS)
    if fmt == "archives":
        return dict(loader="archives", targets=_archives(folder), header=512, tokens=ARCHIVE_TOKENS)
    assert fmt == "trigger-image"
    _png(folder / "key.png")
    Image.fromarray(np.full((4, 6, 3), 90, np.uint8), "RGB").save(folder / "key.ppm")
    return dict(loader="trigger", targets=["key.png", "key.ppm"], header=40, tokens=IMAGE_TOKENS)


# format -> default number of cases (chosen so the whole file runs in about a minute here)
FORMATS = {
    "idx-raw": 500, "idx-gz": 500, "cifar-pickle": 500, "cifar-tgz": 400, "gtsrb-tree": 500, "gtsrb-zip": 500,
    "imdb-tgz": 400, "imdb-folder": 500, "adult": 500, "archives": 300, "trigger-image": 500,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_mutated_files_load_or_fail_in_one_line(tmp_path: Path, fmt: str) -> None:
    cases = CASES or FORMATS[fmt]
    settings = _build(fmt, tmp_path / "data")
    cfg = {"folder": str(tmp_path / "data"), "format": fmt, "seed": SEED, "cases": cases, "inner": True,
           "names": False, "case_seconds": CASE_SECONDS, "keep": str(tmp_path / "failures"), **settings}
    cfg["tokens"] = [t.hex() for t in cfg["tokens"]]
    code = f"CFG = {json.dumps(json.dumps(cfg))}\n" + _CHILD
    out = run_python(code, timeout=120 + cases * 0.5, env={"HOME": str(tmp_path / "home")})
    where = f"format {fmt}, seed {SEED}"
    if out.returncode != 0:  # a crash: the child died without its report
        pytest.fail(f"{where}: child exited {out.returncode}: {out.stderr[-1500:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    found = "\n".join(f"  case {f['case']} ({f['file']}: {f['mutation']}): {f['problem']} [kept: {f['kept']}]"
                      for f in report["failures"])
    assert not report["failures"], f"{where}:\n{found}"
    assert report["loaded"] + report["refused"] >= cases * 0.9  # the loop really ran
    assert report["refused"] > 0  # the mutations really reach the loader's checks
