"""User-facing error text shared by library code and the CLI (library code never imports sharpening.cli)."""


def first_line(err: Exception) -> str:
    """An error as one line of a user message: Hugging Face's model-loading errors, for one, run to several."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
