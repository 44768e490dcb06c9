"""Shared command-line plumbing for the recipe modules."""

import sys

from kerasllm.errors import KerasLLMError


def run_cli(main, argv=None):
    """Runs `main(argv)`; a user mistake prints one `error:` line and exits 2, no traceback."""
    try:
        code = main(argv)
    except KerasLLMError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))  # Interrupted: 130 (SIGINT) / 143 (SIGTERM)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
