"""Build hook: the wheel carries the project's top-level files the code reads (models.csv, data_manifest.csv,
notebooks/, sweeps/) inside the package, as ``xattn_utils/_resources/``, where ``xattn_utils.paths.resource`` finds
them once installed (a checkout reads its own). Everything else is in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
RESOURCES = ("models.csv", "data_manifest.csv", "notebooks", "sweeps")  # = xattn_utils.paths.RESOURCES


class BuildWithResources(build_py):
    """``build_py``, then a copy of ``RESOURCES`` into the built package (not for editable installs: they read the
    checkout)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "xattn_utils" / "_resources"
        dest.mkdir(parents=True, exist_ok=True)
        for name in RESOURCES:
            src = HERE / name
            if src.is_dir():
                shutil.copytree(src, dest / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, dest / name)


setup(cmdclass={"build_py": BuildWithResources})
