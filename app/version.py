"""The version of Parley as installed: what `parley --version` prints and the OpenAPI document states."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("parley")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
