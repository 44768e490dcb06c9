"""Readers for documents and labelled examples: plain text, `.jsonl`, `.csv` and `.tsv`.

* `read_documents(path, text_field=None)` reads a corpus for language modelling: a plain text
  file is one document; every row of a `.jsonl`/`.csv`/`.tsv` file is one document. `path` may
  be a file, a directory or a glob; documents keep their boundaries and their order.
* `read_labelled(path, text_column=None, label_column=None)` reads `(texts, labels)` for
  classification from a `.tsv`, `.csv` or `.jsonl` file (SST-2's `sentence<TAB>label`,
  ChnSentiCorp's `label,review`, ...). Columns are found by common names when not given.
* `read_prompt_response(path, prompt_field, response_field)` reads `(prompts, responses)` for
  supervised fine-tuning from a `.jsonl` file; `read_conversations(path)` reads chat rows
  (`{"messages": [{"role": ..., "content": ...}, ...]}`) for the same.

Every problem is a `DataError` naming the file and, where it helps, the line: missing, empty,
not UTF-8, binary, not valid JSON, unknown column or field.
"""

import csv
import io
import json
from pathlib import Path

from kerasllm.data.corpus import read_text_file, resolve_paths
from kerasllm.errors import DataError

TEXT_NAMES = ("text", "sentence", "review", "content", "document", "body", "comment", "sentence1")
LABEL_NAMES = ("label", "labels", "sentiment", "class", "target", "category", "y")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")


def _read_nonempty(path):
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    text = read_text_file(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected text")
    return text


# How a user names each option: the config key, and the flag where a CLI has one.
OPTION_NAMES = {
    "text_column": "finetune.text_column or --text-column",
    "label_column": "finetune.label_column or --label-column",
    "text_field": "data.text_field",
}


def pick_column(path, available, wanted, defaults, what, option):
    """The column/field to use: `wanted` if given (must exist), else the first default found."""
    if wanted:
        if wanted not in available:
            raise DataError(
                f"{path}: no {what} {wanted!r} ({OPTION_NAMES.get(option, option)}); the file has: "
                f"{', '.join(map(repr, available))}"
            )
        return wanted
    lowered = {str(name).strip().lower(): name for name in available}
    for name in defaults:
        if name in lowered:
            return lowered[name]
    raise DataError(
        f"{path}: cannot tell which {what} holds the {option.split('_')[0]}; the file has "
        f"{', '.join(map(repr, available))}; set {OPTION_NAMES.get(option, option)} (tried {', '.join(defaults)})"
    )


def _table_rows(path, text):
    """(header, [(line_number, row_dict)]) of a .csv (comma) or .tsv (tab) file."""
    delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
    # SST-2 style TSV is not quoted: a lone '"' is text, so quoting is off for tabs.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: the file is empty; expected a header line") from None
    header = [h.strip() for h in header]
    rows = []
    try:
        for values in reader:
            line = reader.line_num
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            if len(values) != len(header):
                raise DataError(
                    f"{path}, line {line}: {len(values)} fields, expected {len(header)} "
                    f"like the header ({', '.join(header)})"
                )
            rows.append((line, dict(zip(header, values))))
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: malformed {delimiter!r}-separated row ({error})") from None
    return header, rows


def parse_jsonl_line(path, number, line):
    """The JSON object on line `number` of a .jsonl file (None for a blank line); anything else
    is a `DataError` naming the file and line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
    return record


def _jsonl_rows(path, text):
    """(field names of the first record, [(line_number, record)]) of a .jsonl file."""
    rows, fields = [], None
    for number, line in enumerate(text.split("\n"), start=1):
        record = parse_jsonl_line(path, number, line)
        if record is None:
            continue
        if fields is None:
            fields = list(record)
        rows.append((number, record))
    return fields or [], rows


def _rows(path):
    text = _read_nonempty(path)
    if Path(path).suffix.lower() == ".jsonl":
        return _jsonl_rows(path, text)
    return _table_rows(path, text)


def _field(path, line, record, name):
    if name not in record:
        raise DataError(f"{path}, line {line}: the record has no field {name!r}")
    value = record[name]
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _parse_labels(labels):
    """Integer labels when every label is an integer ('1', 1, '-1'), else stripped strings."""
    strings = [str(label).strip() for label in labels]
    if all(s.lstrip("-").isdigit() for s in strings):
        return [int(s) for s in strings]
    return strings


def read_labelled(path, text_column=None, label_column=None):
    """Reads a labelled text file for classification.

    Args:
        path: a `.tsv`, `.csv` (with a header line) or `.jsonl` file.
        text_column: the column/field holding the text; default: the first of
            `text, sentence, review, content, document, body, comment, sentence1` present.
        label_column: the column/field holding the label; default: the first of
            `label, labels, sentiment, class, target, category, y` present.

    Returns:
        `(texts, labels)`: lists of equal length, in file order. Rows whose text is empty are
        skipped. Labels are `int` when every label is an integer, otherwise strings.

    Raises:
        DataError: missing/empty/binary/non-UTF-8 file, unknown column, a row without a label.

    Examples:

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "train.tsv")
    >>> _ = open(path, "w").write("sentence\\tlabel\\na fine film\\t1\\ndull\\t0\\n")
    >>> read_labelled(path)
    (['a fine film', 'dull'], [1, 0])
    """
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"{path}: labelled data must be a .tsv, .csv or .jsonl file, got {path.suffix or 'no suffix'!r}")
    fields, rows = _rows(path)
    if not rows:
        raise DataError(f"{path}: no rows after the header; expected labelled examples")
    text_key = pick_column(path, fields, text_column, TEXT_NAMES, "column" if fields else "field", "text_column")
    label_key = pick_column(path, fields, label_column, LABEL_NAMES, "column", "label_column")
    texts, labels = [], []
    for line, record in rows:
        text = _field(path, line, record, text_key)
        label = record.get(label_key)
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{path}, line {line}: empty label in column {label_key!r}")
        if not text.strip():
            continue
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DataError(f"{path}: every row has an empty {text_key!r}; expected text")
    return texts, _parse_labels(labels)


def read_prompt_response(path, prompt_field="prompt", response_field="response"):
    """Reads prompt -> response pairs from a `.jsonl` file (one JSON object per line).

    Returns:
        `(prompts, responses)`: lists of strings of equal length, in file order.

    Raises:
        DataError: missing/empty file, invalid JSON, or a record without a string field (the
            message names the file, the line and the `finetune.*_field` option).

    Examples:

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "sft.jsonl")
    >>> _ = open(path, "w").write('{"q": "2+2?", "a": "4"}\\n')
    >>> read_prompt_response(path, "q", "a")
    (['2+2?'], ['4'])
    """
    path = Path(path)
    _, rows = _jsonl_rows(path, _read_nonempty(path))
    prompts, responses = [], []
    for line, record in rows:
        for name, option in ((prompt_field, "finetune.prompt_field"), (response_field, "finetune.response_field")):
            if not isinstance(record.get(name), str):
                raise DataError(
                    f"{path}, line {line}: expected a string field {name!r} ({option}); the record has "
                    f"{', '.join(map(repr, record)) or 'no fields'}"
                )
        prompts.append(record[prompt_field])
        responses.append(record[response_field])
    if not prompts:
        raise DataError(f"{path}: no records; expected prompt/response examples")
    return prompts, responses


def has_messages(path):
    """True when the first record of a `.jsonl` file has a `messages` field (chat rows)."""
    for number, line in enumerate(_read_nonempty(path).split("\n"), start=1):
        record = parse_jsonl_line(path, number, line)
        if record is not None:
            return "messages" in record
    return False


def read_conversations(path):
    """Reads chat conversations from a `.jsonl` file: one `{"messages": [...]}` per line.

    Every message is `{"role": ..., "content": ...}` with string values (other keys are kept
    for the chat template); each conversation needs an `assistant` message.

    Returns:
        A list of message lists, in file order.

    Raises:
        DataError: missing/empty file, invalid JSON, or a malformed record (named by line).

    Examples:

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "chat.jsonl")
    >>> _ = open(path, "w").write('{"messages": [{"role": "user", "content": "hi"}, '
    ...                           '{"role": "assistant", "content": "hello"}]}\\n')
    >>> [m["role"] for m in read_conversations(path)[0]]
    ['user', 'assistant']
    """
    path = Path(path)
    _, rows = _jsonl_rows(path, _read_nonempty(path))
    conversations = []
    for line, record in rows:
        messages = record.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise DataError(
                f"{path}, line {line}: expected \"messages\": a list of {{\"role\": ..., \"content\": ...}} "
                "objects with string values"
            )
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{path}, line {line}: the conversation has no assistant message to train on")
        conversations.append(messages)
    if not conversations:
        raise DataError(f"{path}: no records; expected chat conversations")
    return conversations


def read_documents(path, text_field=None):
    """Reads a corpus as a list of documents (strings), keeping document boundaries.

    Args:
        path: a file, directory or glob (directories and globs are read in sorted order).
            Plain text files are one document each; each row of a `.jsonl`, `.csv` or `.tsv`
            file is one document.
        text_field: the JSONL field / CSV column holding the text; default: the first of
            `text, sentence, review, content, document, body, comment, sentence1` present.

    Returns:
        A list of non-empty documents.

    Examples:

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "docs.jsonl")
    >>> _ = open(path, "w").write('{"id": 1, "text": "one"}\\n{"id": 2, "text": "two"}\\n')
    >>> read_documents(path)
    ['one', 'two']
    """
    paths = resolve_paths(path)
    documents = []
    for file in paths:
        if file.suffix.lower() in TABLE_SUFFIXES:
            fields, rows = _rows(file)
            key = pick_column(file, fields, text_field, TEXT_NAMES, "field" if file.suffix.lower() == ".jsonl" else "column", "text_field")
            documents.extend(
                text for line, record in rows if (text := _field(file, line, record, key)).strip()
            )
        else:
            text = read_text_file(file)
            if text.strip():
                documents.append(text)
    if not documents:
        first = paths[0]
        what = f"{first}: the file is empty" if len(paths) == 1 else f"{path}: all {len(paths)} files are empty"
        raise DataError(what + "; expected text")
    return documents
