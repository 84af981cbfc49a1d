"""``load_csv``: a numeric table from a CSV file with a header row, split into features and a target.

For tabular regression on your own data, e.g. a house-price file::

    square_feet,bedrooms,distance_km,age_years,price
    1450,3,4.2,31,312.5
    ...

    x, y, names = load_csv("houses.csv", target="price")   # x (n, 4) float32, y (n,) float32
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


class Table(NamedTuple):
    """What ``load_csv`` returns: ``x (n, features)``, ``y (n,)`` (or ``(n, targets)``) and the feature names.

    A NamedTuple, so it unpacks as ``x, y, names = load_csv(...)``.

    Attributes:
      x: ``(n, features)`` the feature columns, in ``feature_names`` order.
      y: ``(n,)`` the target column, or ``(n, targets)`` when several targets were asked for.
      feature_names: the names of ``x``'s columns.

    Example:
      >>> table = nnjax.data.Table(np.zeros((3, 2), np.float32), np.ones(3, np.float32), ("sqft", "age"))
      >>> x, y, names = table
      >>> x.shape, y.shape, names
      ((3, 2), (3,), ('sqft', 'age'))
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]


def _not_text(path: str | os.PathLike, error: Exception) -> str:
    """The message for a file that is not UTF-8 text (a binary, compressed or NUL-padded file)."""
    if isinstance(error, UnicodeDecodeError):
        found = f"byte 0x{error.object[error.start]:02x} at offset {error.start} is not UTF-8 text"
    else:
        found = f"line {error.args[0] if error.args else '?'}"
    with open(path, "rb") as f:
        magic = f.read(4)
    kinds = {
        b"\x1f\x8b": "a gzip file: decompress it first",
        b"PK": "a zip or .npz file",
        b"\x93N": "a NumPy .npy file",
    }
    kind = next((f" (it starts like {what})" for head, what in kinds.items() if magic.startswith(head)), "")
    return (
        f"load_csv: {os.fspath(path)!r} is not a text CSV file{kind}: {found}. "
        "Hint: load_csv reads UTF-8 text with a header row; binary files need their own reader "
        "(nnjax.data.read_idx for IDX files, np.load for .npy/.npz)."
    )


def load_csv(
    path: str | os.PathLike,
    target: str | Sequence[str],
    features: Sequence[str] | None = None,
    *,
    delimiter: str = ",",
    dropna: bool = False,
    dtype: type = np.float32,
) -> Table:
    """Reads numeric columns of a CSV file with a header row.

    Surrounding spaces in names and cells are ignored, and so are blank lines. Every used cell must be
    a finite number: categories must be encoded as numbers first.

    Args:
      path: the file (UTF-8; a byte-order mark is accepted).
      target: the column to predict, or a list of columns (then ``y`` is ``(n, len(target))``).
      features: the input columns, in this order; default every other column.
      delimiter: the field separator (``";"`` for many European exports, ``"\\t"`` for TSV).
      dropna: drop rows with a missing value (empty, NA, NaN, null, ?) in a used column instead of raising.
      dtype: the dtype of ``x`` and ``y``.

    Returns:
      ``Table(x, y, feature_names)``, which unpacks as ``x, y, names = load_csv(...)``.

    Raises:
      KeyError: a named column is not in the header (the message lists the header).
      ValueError: a non-numeric, missing or infinite value (with its line and column), a row of the wrong
        length, an empty file, a repeated column name, a column that is both feature and target, or no
        (complete) data rows, or a file that is not UTF-8 text (a binary or compressed file; the
        message names the file).
      OSError: the file cannot be opened (e.g. ``FileNotFoundError``).

    Example:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     path = os.path.join(tmp, "houses.csv")
      ...     with open(path, "w") as f:
      ...         _ = f.write("square_feet,bedrooms,price\\n1450,3,312.5\\n2100,4,455.0\\n")
      ...     x, y, names = nnjax.data.load_csv(path, target="price")
      >>> x.shape, x.dtype, y.tolist(), names
      ((2, 2), dtype('float32'), [312.5, 455.0], ('square_feet', 'bedrooms'))
    """
    targets = [target] if isinstance(target, str) else list(target)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = [name.strip() for name in next(reader)]
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
        except StopIteration:
            raise ValueError(f"load_csv: {os.fspath(path)!r} is empty; expected a header row.") from None
        except (UnicodeDecodeError, csv.Error) as error:
            raise ValueError(_not_text(path, error)) from error
    if len(set(header)) != len(header):
        duplicates = sorted({h for h in header if header.count(h) > 1})
        raise ValueError(f"load_csv: the header of {os.fspath(path)!r} repeats columns {duplicates}.")
    names = [h for h in header if h not in targets] if features is None else list(features)
    for name in [*targets, *names]:
        if name not in header:
            hint = " Hint: the file may use another delimiter, e.g. delimiter=';'." if len(header) == 1 else ""
            raise KeyError(f"load_csv: column {name!r} is not in the header of {os.fspath(path)!r}: {header}.{hint}")
    overlap = set(names) & set(targets)
    if overlap:
        raise ValueError(f"load_csv: columns {sorted(overlap)} are both features and target.")
    columns = [header.index(n) for n in names], [header.index(t) for t in targets]
    x_rows, y_rows = [], []
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"load_csv: line {line} of {os.fspath(path)!r} has {len(row)} fields, the header {len(header)}."
            )
        values, missing = [], False
        for idx in [*columns[0], *columns[1]]:
            cell = row[idx].strip()
            if cell.lower() in MISSING:
                missing = True
                if dropna:
                    break
                raise ValueError(
                    f"load_csv: line {line}, column {header[idx]!r} of {os.fspath(path)!r} is missing ({cell!r}). "
                    f"Hint: pass dropna=True to skip incomplete rows, or fill the value in."
                )
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(
                    f"load_csv: line {line}, column {header[idx]!r} of {os.fspath(path)!r} is not a number: {cell!r}. "
                    f"Hint: encode categories as numbers first, or leave the column out with features=[...]."
                ) from None
            if not math.isfinite(value):
                raise ValueError(f"load_csv: line {line}, column {header[idx]!r} of {os.fspath(path)!r} is {cell!r}.")
            values.append(value)
        if missing:
            continue
        x_rows.append(values[: len(names)])
        y_rows.append(values[len(names) :])
    if not x_rows:
        raise ValueError(f"load_csv: {os.fspath(path)!r} has no complete data rows.")
    x = np.asarray(x_rows, dtype).reshape(len(x_rows), len(names))
    y = np.asarray(y_rows, dtype)
    return Table(x, y[:, 0] if isinstance(target, str) else y, tuple(names))
