"""The shared corpora: a folder of data sets beside the repository, used when it is there.

A checkout of kerasllm may sit next to a `shared/data/` folder (`../shared/data` from the
repository root) holding copies of public corpora (Tiny Shakespeare, WikiText-2, Chinese novels,
SST-2, ChnSentiCorp), each with a `SOURCE.md`. `KERASLLM_SHARED_DATA` points elsewhere.
`resolve_corpus` picks the shared copy when present, else the registered download, else the
built-in `python-stdlib` corpus, so a notebook or script runs on any machine.

    from kerasllm.data.shared import resolve_corpus, shared_file
"""

import os
import tempfile
from pathlib import Path

from kerasllm.errors import DataError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

# Shared-corpus files by registered dataset name (paths relative to the shared data folder).
SHARED_FILES = {
    "tinyshakespeare": "tinyshakespeare/input.txt",
    "wikitext-2": "wikitext-2/train.txt",
}


def shared_data_dir():
    """`$KERASLLM_SHARED_DATA`, else `../shared/data` beside the repository root, or `None`."""
    env = os.environ.get("KERASLLM_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def shared_file(relative, required=True):
    """A file of the shared corpora, e.g. `shared_file("chinese/hongloumeng.txt")`.

    Args:
        relative: path inside the shared data folder.
        required: raise a `DataError` when missing (else return `None`).

    Examples:

    >>> shared_file("no/such/file.txt", required=False) is None
    True
    """
    root = shared_data_dir()
    path = root / relative if root else None
    if path is not None and path.is_file():
        return path
    if not required:
        return None
    where = root or REPO_ROOT.parent / "shared" / "data"
    raise DataError(
        f"{relative}: not found under {where}; set KERASLLM_SHARED_DATA to the folder that "
        f"holds it (see its SOURCE.md) or pass the path of your own copy"
    )


def resolve_corpus(name="tinyshakespeare", log=print):
    """What to put in `data.dataset`: the shared copy, else the download, else the built-in corpus.

    Args:
        name: a registered dataset (`tinyshakespeare`, `wikitext-2`) or `python-stdlib`.
        log: prints which source was chosen.

    Returns:
        A file path or dataset name for `kerasllm.data.load_corpus`.

    Examples:

    >>> resolve_corpus("python-stdlib", log=lambda line: None)
    'python-stdlib'
    """
    if name == "python-stdlib":
        return name
    relative = SHARED_FILES.get(name)
    path = shared_file(relative, required=False) if relative else None
    if path is not None:
        log(f"data: {name} from the shared corpora, {path}")
        return str(path)
    from kerasllm.data.corpus import REGISTERED_DATASETS, fetch_registered

    if name not in REGISTERED_DATASETS:
        raise DataError(f"{name!r}: not a registered dataset (known: python-stdlib, {', '.join(REGISTERED_DATASETS)})")
    try:
        path = fetch_registered(name)
    except DataError as error:
        log(f"data: {error}\ndata: falling back to the built-in python-stdlib corpus")
        return "python-stdlib"
    log(f"data: {name} from {path}")
    return str(path)


def head_lines(path, lines, directory=None):
    """The first `lines` lines of a text file (a header line counts as one) as a new file, for
    shrinking a data set in smoke runs; `path` itself when `lines` is None.

    Examples:

    >>> import pathlib, tempfile
    >>> source = pathlib.Path(tempfile.mkdtemp()) / "train.tsv"
    >>> _ = source.write_text("sentence\\tlabel\\na\\t1\\nb\\t0\\nc\\t1\\n")
    >>> head_lines(source, 3).read_text()
    'sentence\\tlabel\\na\\t1\\nb\\t0\\n'
    """
    path = Path(path)
    if lines is None:
        return path
    directory = Path(directory or tempfile.mkdtemp(prefix="kerasllm-head-"))
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{path.stem}.head{lines}{path.suffix}"
    with open(path, encoding="utf-8") as source, open(target, "w", encoding="utf-8") as out:
        for index, line in enumerate(source):
            if index >= lines:
                break
            out.write(line)
    return target
