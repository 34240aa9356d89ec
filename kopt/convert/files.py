"""Model files in memory and on disk: the bytes a converter returns, written atomically."""

import os
import tempfile


def check_folder(path, argument="path"):
    """Raises a ValueError naming `argument` if the folder of `path` does not exist (checked before slow work)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise ValueError(f"`{argument}` {os.fspath(path)!r}: the folder {folder!r} does not exist. Create it first.")


def write_atomically(path, content):
    """Writes `content` to a temporary file next to `path` (`.kopt-*<ext>.part`), then renames it to `path`.

    A reader never sees a half-written file, and a failure leaves no file behind.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    suffix = (os.path.splitext(path)[1] or ".bin") + ".part"
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".kopt-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class ModelFile(bytes):
    """The bytes of a converted model, with the `report` of its validation and the `path` it was written to."""

    report = None
    path = None

    def save(self, path):
        """Writes the file to `path` atomically (its folder must exist) and returns `path`.

        Args:
            path: where to write, e.g. "model_int8.tflite".
        """
        check_folder(path)
        write_atomically(path, bytes(self))
        self.path = os.fspath(path)
        return self.path
