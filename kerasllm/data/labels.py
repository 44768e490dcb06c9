"""Class labels of a classification file: names, indices and class weights."""

import numpy as np

from kerasllm.errors import ConfigError, DataError


def label_names(labels, source="data"):
    """The sorted distinct labels as strings (numerically sorted when all are integers).

    Raises:
        DataError: fewer than two distinct labels.

    Examples:

    >>> label_names(["10", "2", "2", 10])
    ['2', '10']
    """
    names = sorted({str(label).strip() for label in labels})
    if all(name.lstrip("-").isdigit() for name in names):
        names.sort(key=int)
    if not names:
        raise DataError(f"{source}: no labelled examples")
    if len(names) < 2:
        raise DataError(
            f"{source}: every example has the label {names[0]!r}; a classifier needs at least 2 "
            "distinct labels"
        )
    return names


def label_ids(labels, names, source="data"):
    """Maps labels to class indices of `names`; an unknown label is a `DataError`.

    Examples:

    >>> label_ids([1, "0", " 1"], ["0", "1"]).tolist()
    [1, 0, 1]
    """
    index = {name: i for i, name in enumerate(names)}
    strings = [str(label).strip() for label in labels]
    unknown = sorted(set(strings) - set(index))
    if unknown:
        raise DataError(
            f"{source}: labels {', '.join(map(repr, unknown[:5]))} are not among the model's labels "
            f"{', '.join(map(repr, names))}"
        )
    return np.array([index[s] for s in strings], dtype=np.int32)


def class_weight_dict(spec, names, y):
    """`finetune.class_weights` -> Keras `class_weight` ({index: weight}) or None.

    Examples:

    >>> class_weight_dict("balanced", ["0", "1"], np.array([0, 0, 0, 1]))
    {0: 0.6666666666666666, 1: 2.0}
    """
    spec = spec.strip()
    if not spec:
        return None
    if spec == "balanced":
        counts = np.bincount(y, minlength=len(names))
        return {i: float(len(y) / (len(names) * c)) if c else 0.0 for i, c in enumerate(counts)}
    weights = {i: 1.0 for i in range(len(names))}
    for item in spec.split(","):
        label, sep, value = item.rpartition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or weight is None or label.strip() not in names:
            raise ConfigError(
                f"finetune.class_weights = {spec!r}: expected 'balanced' or LABEL:WEIGHT pairs with "
                f"LABEL one of {', '.join(names)}"
            )
        weights[names.index(label.strip())] = weight
    return weights
