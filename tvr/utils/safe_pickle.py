"""Reading pickled data files without letting them run code.

A pickle is a small program: it may look up any importable callable (``GLOBAL`` / ``STACK_GLOBAL`` /
``INST`` / ``EXT*``, all through ``find_class``) and call it (``REDUCE`` / ``OBJ`` / ``NEWOBJ`` /
``BUILD``), so ``pickle.load`` on a crafted file runs whatever the file asks for. Dicts, lists,
tuples, strings, numbers, booleans and None are built by opcodes of their own, without looking
anything up, so a reader that refuses every lookup still reads plain-container files (such as
MSVD's ``raw-captions.pkl``) and nothing else.
"""
from __future__ import annotations

import io
import os
import pickle

__all__ = ["UnsafePickleError", "load_plain_pickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a Python object other than plain containers, strings and numbers."""


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what needs no lookup; any request for a class or function is refused."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="utf-8")  # Python 2 byte strings decode as UTF-8 text
        self._path = path

    def find_class(self, module, name):
        raise UnsafePickleError(
            f"{self._path}: refusing to load {module}.{name} from this pickle. Only plain dicts, "
            f"lists, tuples, strings and numbers are accepted (a data file that names a class or "
            f"function could run code when loaded).")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._path}: refusing a persistent id in this pickle: only plain "
                                f"dicts, lists, tuples, strings and numbers are accepted.")


def load_plain_pickle(path: str):
    """Load a pickle made only of builtin containers, strings and numbers.

    Raises UnsafePickleError when the file refers to any class or function, and
    pickle.UnpicklingError (naming the file) when it is truncated or not a pickle at all.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _PlainUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, UnicodeDecodeError, MemoryError) as exc:
        raise pickle.UnpicklingError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
