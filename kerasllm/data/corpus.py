"""Corpus readers: registered datasets, text files, directories and globs.

`load_corpus(spec)` turns what a user passes as `--data` into a list of documents (strings).
Registered names:

* `python-stdlib` — the built-in corpus: a fixed selection of about 4 MB of `.py` files from
  the standard library of the running interpreter (see `PYTHON_STDLIB_FILES`). It exists on
  every machine that runs kerasllm, needs no download and is never copied into the repo.
* `tinyshakespeare` — Karpathy's Tiny Shakespeare (1.1 MB), downloaded once by URL with a
  sha256 check into the Keras cache.
* `wikitext-2` — the word-level WikiText-2 train split (10.8 MB), same mechanism.

A downloadable dataset is first looked up in `$KERASLLM_DATA_DIR/<name>/<file>`, then in the
Keras cache (`~/.keras/datasets/kerasllm/<name>/<file>`), and only then downloaded, so a local
copy always works offline.
"""

import dataclasses
import glob
import hashlib
import os
import sysconfig
from pathlib import Path

from kerasllm.errors import DataError

# A fixed, documented selection: modules present in CPython 3.10 through 3.13. Patterns are
# relative to the stdlib folder; files are read in this order, sorted within a pattern.
PYTHON_STDLIB_FILES = (
    "argparse.py", "dataclasses.py", "functools.py", "inspect.py", "typing.py", "textwrap.py",
    "shutil.py", "subprocess.py", "threading.py", "tarfile.py", "zipfile.py", "configparser.py",
    "enum.py", "fractions.py", "heapq.py", "difflib.py", "pprint.py", "tempfile.py",
    "contextlib.py", "csv.py", "decimal.py", "statistics.py", "random.py", "string.py",
    "calendar.py", "ftplib.py", "imaplib.py", "smtplib.py", "gettext.py", "locale.py",
    "traceback.py", "weakref.py", "bisect.py", "abc.py", "copy.py", "shlex.py", "glob.py",
    "fnmatch.py", "base64.py", "uuid.py", "ipaddress.py", "datetime.py",
    "json/*.py", "email/*.py", "asyncio/*.py", "logging/*.py", "concurrent/futures/*.py",
    "http/*.py", "urllib/*.py", "unittest/*.py", "collections/__init__.py", "importlib/*.py",
    "xml/dom/*.py", "xml/etree/*.py", "sqlite3/*.py",
)


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A public text file fetched by URL and verified by sha256."""

    filename: str
    url: str
    sha256: str


REGISTERED_DATASETS = {
    "tinyshakespeare": RemoteFile(
        "input.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "wikitext-2": RemoteFile(
        "train.txt",
        "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/train.txt",
        "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    ),
}


def dataset_names():
    return ["python-stdlib", *REGISTERED_DATASETS]


def python_stdlib_files():
    """The built-in corpus's files for the running interpreter."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for pattern in PYTHON_STDLIB_FILES:
        files.extend(sorted(root.glob(pattern)))
    if not files:
        raise DataError(
            f"python-stdlib: no standard-library .py files found under {root}; "
            "pass --data with a text file instead"
        )
    return files


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_registered(name):
    """Returns the local path of a registered dataset, downloading it if needed."""
    remote = REGISTERED_DATASETS[name]
    data_dir = os.environ.get("KERASLLM_DATA_DIR")
    if data_dir:
        local = Path(data_dir) / name / remote.filename
        if local.is_file():
            return local
    import keras  # deferred: only downloads need it

    cache_subdir = os.path.join("datasets", "kerasllm", name)
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    cached = Path(keras_home) / cache_subdir / remote.filename
    try:
        path = keras.utils.get_file(
            fname=remote.filename,
            origin=remote.url,
            file_hash=remote.sha256,
            hash_algorithm="sha256",
            cache_subdir=cache_subdir,
        )
    except Exception as error:  # no network, proxy, hash mismatch...
        where = f"$KERASLLM_DATA_DIR/{name}/{remote.filename}"
        raise DataError(
            f"dataset {name!r}: could not download {remote.url} ({type(error).__name__}: "
            f"{str(error)[:200]}). Put the file at {where} (or at {cached}), or pass its path "
            "with --data"
        ) from None
    return Path(path)


def resolve_paths(spec):
    """Resolves `--data` (a dataset name, file, directory or glob) to a list of files."""
    spec = str(spec)
    if spec == "python-stdlib":
        return python_stdlib_files()
    if spec in REGISTERED_DATASETS:
        return [fetch_registered(spec)]
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: the directory holds no files")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{spec}: the glob matches no files")
        return files
    raise DataError(
        f"{spec}: no such file or directory, and not a registered dataset "
        f"(known: {', '.join(dataset_names())})"
    )


def read_text_file(path):
    """Reads a UTF-8 text file, with clear errors for binary and non-UTF-8 content."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    nul = raw.find(b"\x00")
    if nul != -1:
        raise DataError(f"{path}: looks like a binary file (NUL byte at offset {nul}); expected UTF-8 text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8 (byte offset {error.start}, line {line}); "
            "convert it to UTF-8 first"
        ) from None
    return text.replace("\r\n", "\n")


def load_corpus(spec):
    """Loads `--data` as a list of non-empty documents, one per file.

    Examples:

    >>> docs = load_corpus("python-stdlib")
    >>> len(docs) > 100 and sum(map(len, docs)) > 3_000_000
    True
    """
    paths = resolve_paths(spec)
    documents = [text for text in map(read_text_file, paths) if text.strip()]
    if not documents:
        what = f"{paths[0]}: the file is empty" if len(paths) == 1 else f"{spec}: all {len(paths)} files are empty"
        raise DataError(what + "; expected text to train on")
    return documents
