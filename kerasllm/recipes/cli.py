"""Shared command-line plumbing for the recipe modules: error lines, exit codes, a quiet start.

A recipe module parses its arguments first and imports TensorFlow only after (so `--help` and
a bad argument answer at once), then runs through `run_cli`. TensorFlow 2.21 prints 6-9 lines
of C++ logging while it loads (oneDNN, "Could not find cuda drivers", `failed call to cuInit` on
a CPU-only machine) before absl logging is initialized, so `TF_CPP_MIN_LOG_LEVEL` cannot silence
them. `run_cli` loads TensorFlow, when something first imports it, with stderr captured and
drops exactly those known lines; anything else TensorFlow writes while loading is passed on,
and if the import fails everything it wrote is. `--verbose` or `KERASLLM_VERBOSE=1` shows
TensorFlow's messages unfiltered.
"""

import argparse
import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

from kerasllm.errors import KerasLLMError

VERBOSE_ENV = "KERASLLM_VERBOSE"

# What TensorFlow prints while it loads on a machine without (or with) a GPU: informational only.
_START_UP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor|cuda_fft"
    r"|cuda_dnn|cuda_blas|computation_placer|gpu_device|dso_loader)\.cc:\d+\] .*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
)


def verbose():
    """True when TensorFlow's start-up messages should be shown (`KERASLLM_VERBOSE=1`)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _VerboseAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[VERBOSE_ENV] = "1"  # read when TensorFlow is imported, after parsing
        import kerasllm

        if kerasllm.DEFAULTED_TF_LOG_LEVEL:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        setattr(namespace, self.dest, True)


def add_verbose_flag(parser):
    """Adds `--verbose`: show TensorFlow's own start-up and info messages (as `KERASLLM_VERBOSE=1`)."""
    parser.add_argument(
        "--verbose", action=_VerboseAction, nargs=0, default=False,
        help=f"also print TensorFlow's start-up messages (or set {VERBOSE_ENV}=1)",
    )
    return parser


def without_start_up_noise(text):
    """`text` without the lines TensorFlow prints while it loads.

    Examples:

    >>> without_start_up_noise(
    ...     "I0000 00:00:1796161082.516527    6621 cudart_stub.cc:31] Could not find cuda drivers\\n"
    ...     "Traceback (most recent call last):\\n")
    'Traceback (most recent call last):\\n'
    """
    return "".join(line for line in text.splitlines(keepends=True) if not _START_UP_NOISE.fullmatch(line.rstrip("\n")))


@contextlib.contextmanager
def captured_stderr():
    """Sends file descriptor 2 (C++ and Python writes alike) to a temporary file; yields a
    function returning what was written so far. stderr is restored on exit."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)

        def written():
            sys.stderr.flush()
            capture.seek(0)
            return capture.read().decode("utf-8", "replace")

        try:
            yield written
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's `__init__` (and its device discovery) with stderr captured."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        error = None
        with captured_stderr() as written:
            try:
                self.loader.exec_module(module)
                module.config.list_physical_devices()  # the CUDA probe logs here, not at import
            except BaseException as raised:  # also Ctrl-C: what TensorFlow said is shown in full
                error = raised
            text = written()
        sys.stderr.write(text if error is not None else without_start_up_noise(text))
        sys.stderr.flush()
        if error is not None:
            raise error


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual and hands it to `_QuietLoader`; removes itself once used."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or verbose():
            return None
        uninstall_quiet_import()
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install_quiet_import():
    """Makes the first `import tensorflow` of this process drop TensorFlow's start-up lines."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


def uninstall_quiet_import():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowFinder)]


def run_cli(main, argv=None):
    """Runs `main(argv)` quietly; a user mistake prints one `error:` line and exits 2, no traceback."""
    install_quiet_import()
    try:
        code = main(argv)
    except KerasLLMError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))  # Interrupted: 130 (SIGINT) / 143 (SIGTERM)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        uninstall_quiet_import()
    sys.exit(code or 0)


def recipe_parser(prog, description, data_help="a text file, a directory or glob of text files"):
    """An argument parser with the `--recipe` and `--data` options of the training recipes,
    listing every config key for `--set` in its epilog."""
    import argparse

    from kerasllm.config import describe_keys
    from kerasllm.data.corpus import dataset_names

    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys for --set:\n" + describe_keys(),
    )
    parser.add_argument(
        "--recipe", default="default",
        help="a recipe TOML file, or the name of a file in recipes/ (default: default)",
    )
    parser.add_argument(
        "--data", default=None,
        help=f"{data_help}, or a dataset name ({', '.join(dataset_names())}); overrides data.dataset",
    )
    return parser
