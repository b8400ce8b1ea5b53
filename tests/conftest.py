"""One compilation cache for the whole test session: the end-to-end tests start many training
processes of the same tiny models, and each would otherwise compile them again."""

import os
import shutil
import tempfile

_OWNED = []


def pytest_configure(config):
    # xdist workers inherit the controller's environment, so only the controller makes the folder.
    if "SSM_LRA_COMPILATION_CACHE" not in os.environ and not hasattr(config, "workerinput"):
        folder = tempfile.mkdtemp(prefix="ssm_lra-test-compilation-")
        os.environ["SSM_LRA_COMPILATION_CACHE"] = folder
        _OWNED.append(folder)


def pytest_unconfigure(config):
    for folder in _OWNED:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("SSM_LRA_COMPILATION_CACHE", None)
